"""Hugging Face Spaces (any Gradio app) through gradio_client.

``settings`` and ``spaces`` import nothing heavy; ``backend`` (which imports gradio_client)
is loaded by the registry only when a Space is configured.
"""

from imagegate.backends.hf_space.settings import HFSpaceSettings, from_env

__all__ = ["HFSpaceSettings", "from_env"]
