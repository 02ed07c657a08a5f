"""Client for BucketServe on Triton (gRPC streaming, also asyncio, and HTTP generate). Never imports the backend."""

from .aio import AsyncGrpcClient, RequestFailed, StreamChunk
from .client import GenerationResult, GrpcClient, GrpcGeneration, HttpClient, make_client

__all__ = ["AsyncGrpcClient", "RequestFailed", "StreamChunk", "GenerationResult", "GrpcClient", "GrpcGeneration", "HttpClient", "make_client"]
