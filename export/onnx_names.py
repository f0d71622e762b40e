"""How TensorRT's ONNX parser names the nodes of a graph: the one rule the FP16 check, the FP16
graph writer and the TensorRT build share (kept below all three, so none imports another for it)."""
from __future__ import annotations


def parser_node_name(node) -> str:
    """The name TensorRT's ONNX parser gives a node: its own, or ``node_of_<first output>``
    when it has none (onnx-tensorrt ``getNodeName``)."""
    if not node.name and len(node.output):
        return f"node_of_{node.output[0]}"
    return node.name
