"""`python -m service.projects.strava_integration.simulator`: serve the simulator with uvicorn."""

import argparse

import uvicorn

from . import SimulatorConfig, create_simulator


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the Strava API v3 simulator.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--activity-count", type=int, default=SimulatorConfig.activity_count)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    app = create_simulator(SimulatorConfig(activity_count=args.activity_count))
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)


if __name__ == "__main__":
    main()
