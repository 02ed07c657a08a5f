"""Client for BucketServe on Triton (gRPC streaming and HTTP generate). Never imports the backend."""

from .client import GenerationResult, GrpcClient, GrpcGeneration, HttpClient, make_client

__all__ = ["GenerationResult", "GrpcClient", "GrpcGeneration", "HttpClient", "make_client"]
