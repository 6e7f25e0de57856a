"""`python -m iris_gateway`: serve the gateway (settings from GATEWAY_* and .env)."""

from iris_gateway.config import get_settings
from iris_shared.server import run

if __name__ == "__main__":
    run("gateway", "iris_gateway.app:create_app", get_settings())
