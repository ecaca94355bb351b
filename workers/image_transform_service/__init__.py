"""image_transform_service (seed 004's example): resize, grayscale or rotate an image with Pillow."""
