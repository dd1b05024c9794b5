"""Serving: Triton model repositories (local folder or S3), their configs, and a real Triton to prove them."""
