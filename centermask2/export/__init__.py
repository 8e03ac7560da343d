"""Exporters: ONNX (standard operators only). The model's contract is :mod:`centermask2.contract`."""

from .onnx import ExportSettings, OnnxExportModule, build_metadata, default_opset, export_onnx

__all__ = ["ExportSettings", "OnnxExportModule", "build_metadata", "default_opset", "export_onnx"]
