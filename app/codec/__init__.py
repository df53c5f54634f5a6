"""Every wire format <-> numpy: TF JSON, tf.Example, TensorProto, status and metadata. Pure
functions, no I/O.
"""
