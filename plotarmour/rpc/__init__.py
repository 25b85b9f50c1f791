"""Generated gRPC stubs for protos/plotarmour/v1 (do not edit them by hand).

    from plotarmour.rpc import language_model_pb2 as pb, language_model_pb2_grpc as pb_grpc

Regenerate after changing a .proto:  python -m plotarmour.rpc.generate
(`--check` exits 1 when the committed stubs are stale). Nothing is imported here, so
the generator still runs when the stubs are broken.
"""
