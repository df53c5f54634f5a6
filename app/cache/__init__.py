"""Result cache: keys, Redis client, circuit breaker, single flight, config."""
