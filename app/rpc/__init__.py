"""gRPC servicers (PredictionService, ModelService, admin) and the server that hosts them."""
