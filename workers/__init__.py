"""Worker services that implement seed 004's instance interface (GET /me, POST /run), runnable alone.

    python -m workers.image_transform_service --port 8101
    python -m workers.echo_service --port 8201 [--name echo_service] [--fail]
"""
