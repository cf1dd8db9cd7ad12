"""Build the serving image with podman on a locally made Debian base, and run the rendered Deployment in it."""
