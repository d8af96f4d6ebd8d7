"""Trustflow storage backends ``s3`` (S3 and S3-compatible services such as MinIO, through
boto3) and ``oss`` (Alibaba Cloud OSS, through oss2)."""

from __future__ import annotations
