"""`python -m iris_gateway`: serve the gateway (settings from GATEWAY_* and .env)."""

from iris_gateway.config import get_settings
from iris_shared.servable import forbid_unpickling
from iris_shared.server import run

if __name__ == "__main__":
    # The gateway loads no model: should any of its code ever reach an MLflow loader, it is
    # refused, as in every service process.
    forbid_unpickling()
    run("gateway", "iris_gateway.app:create_app", get_settings())
