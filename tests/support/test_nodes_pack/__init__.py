"""Test-only ComfyUI nodes for a real server: tiny random-weight models in place of stock loaders.

Loaded from a test's temporary custom_nodes/ folder; never shipped with the pack.
"""

import os
import sys

sys.path.insert(0, os.environ.get("DTI_TEST_SUPPORT", os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import comfy_harness  # noqa: E402

comfy_harness.register_test_nodes()
NODE_CLASS_MAPPINGS = comfy_harness.test_node_classes()
