"""Kairos: a real-time personalization engine for e-commerce content marketing.

The code lives in five packages mapped under this namespace (see pyproject.toml):
``kairos.schemas`` (records), ``kairos.engine`` (domain logic), ``kairos.models`` (ONNX runtime),
``kairos.agents`` (Faust/Kafka/Redis wiring and the CLI) and ``kairos.onnx_export`` (offline training).
"""

__version__ = "0.1.0"
