"""Operations: metrics under TF Serving's names, logs."""
