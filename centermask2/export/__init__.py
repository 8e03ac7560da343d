"""Exporters: ONNX (standard operators only)."""

from .onnx import INPUT_NAMES, ExportSettings, ModelMetadata, OnnxExportModule, export_onnx, read_metadata

__all__ = ["INPUT_NAMES", "ExportSettings", "ModelMetadata", "OnnxExportModule", "export_onnx", "read_metadata"]
