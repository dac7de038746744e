"""The real launcher with the test-only demo project added: `python -m tests.run_with_demo`."""

import sys

from service.launcher import main
from service.projects import REGISTRY
from tests.demo_project import DEMO

sys.exit(main(projects=(*REGISTRY, DEMO)))
