"""python -m workers.image_transform_service --port 8101"""

from __future__ import annotations

from workers.image_transform_service.app import create_app
from workers.serving import arguments, serve


def main() -> None:
    parser = arguments("image_transform_service: resize, grayscale or rotate images (seed 004)", 8101)
    parser.add_argument("--max-concurrency", type=int, default=4, help="tasks at once (told to the proxy in /me)")
    args = parser.parse_args()
    serve(create_app(args.max_concurrency), args.host, args.port)


if __name__ == "__main__":
    main()
