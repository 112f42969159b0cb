"""Services: the inference daemon and the generator daemon (DESIGN §7).

Build the apps with :func:`workbench.service.inference_app.create_app` and
:func:`workbench.service.generator_app.create_generator_app`, or run them with ``workbench serve``
and ``workbench stream``. This top level stays light: the apps import torch and FastAPI.
"""

from workbench.service.settings import GeneratorSettings, InferenceSettings

__all__ = ["GeneratorSettings", "InferenceSettings"]
