"""`pasu export`: the device model as ONNX graphs with explicit state (see :mod:`.graphs`)."""

from pasu.tools.export.exporter import ExportOptions, UnsupportedModelError, export_model, why_not_exportable

__all__ = ["ExportOptions", "UnsupportedModelError", "export_model", "why_not_exportable"]
