#!/bin/sh
# Packages installed while an image is built must not start their services (Redis,
# PostgreSQL, Prometheus...): a container starts its one process itself.
exit 101
