"""Convert a CTranslate2 Whisper model folder into an openai-whisper checkpoint (.pt).

CTranslate2 has no Python API that reads a model.bin back, so this script parses
the binary itself. The layout is the one ``ctranslate2.specs.ModelSpec._serialize``
writes in ctranslate2 4.x (binary version 6): a header, then each variable as
name, rank, dimensions, dtype id, byte count and raw little-endian data, then the
aliases. The Whisper tensors map one to one onto openai-whisper's state dict,
except that CTranslate2 fuses the query, key and value projections.

Usage::

    python scripts/convert_ct2_whisper_to_openai.py MODEL_DIR OUTPUT.pt
"""

from __future__ import annotations

import argparse
import re
import struct
import sys
from pathlib import Path
from typing import BinaryIO

import numpy as np

SUPPORTED_BINARY_VERSIONS = (5, 6)
CT2_DTYPES = ("float32", "int8", "int16", "int32", "float16", "bfloat16")
"""CTranslate2's dtype ids, in id order."""
TEXT_CONTEXT_TOKENS = 448


def read_ct2_variables(model_bin: Path) -> dict[str, np.ndarray]:
    """Read every variable of a CTranslate2 model.bin into float32 (weights) or integer (scalars) arrays.

    int8 weights are dequantized with their ``<name>_scale`` companions. Raises
    ValueError for a binary version other than 5 or 6 or a model that is not Whisper.
    """
    with model_bin.open("rb") as handle:
        version = _read_struct(handle, "I")
        if version not in SUPPORTED_BINARY_VERSIONS:
            raise ValueError(f"{model_bin}: binary version {version} is not supported (expected 5 or 6).")
        spec_name = _read_string(handle)
        if spec_name != "WhisperSpec":
            raise ValueError(f"{model_bin}: the model is a {spec_name}, not a WhisperSpec.")
        _read_struct(handle, "I")  # Spec revision; the Whisper layout has not changed across revisions.

        count = _read_struct(handle, "I")
        variables = dict(_read_variable(handle) for _ in range(count))

    return _dequantize(variables)


def _read_struct(handle: BinaryIO, fmt: str) -> int:
    size = struct.calcsize(fmt)
    return struct.unpack("<" + fmt, handle.read(size))[0]


def _read_string(handle: BinaryIO) -> str:
    """Read a string stored as a uint16 length that counts a trailing NUL byte."""
    length = _read_struct(handle, "H")
    return handle.read(length)[:-1].decode("utf-8")


def _read_variable(handle: BinaryIO) -> tuple[str, np.ndarray]:
    name = _read_string(handle)
    rank = _read_struct(handle, "B")
    shape = tuple(_read_struct(handle, "I") for _ in range(rank))
    dtype = CT2_DTYPES[_read_struct(handle, "B")]
    num_bytes = _read_struct(handle, "I")
    raw = handle.read(num_bytes)

    if dtype == "bfloat16":
        upper = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        array = upper.view(np.float32)
    else:
        array = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<"))
    return name, array.reshape(shape)


def _dequantize(variables: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Turn int8 weights with a per-row ``_scale`` into float32, and float16 into float32."""
    result: dict[str, np.ndarray] = {}
    for name, array in variables.items():
        if name.endswith("_scale"):
            continue
        scale = variables.get(name + "_scale")
        if scale is not None and array.dtype == np.int8:
            array = array.astype(np.float32) / scale.astype(np.float32).reshape(-1, 1)
        elif array.dtype in (np.float16, np.float32):
            array = array.astype(np.float32)
        result[name] = array
    return result


def to_openai_checkpoint(variables: dict[str, np.ndarray]) -> dict:
    """Map CTranslate2 Whisper variables to openai-whisper's ``{"dims", "model_state_dict"}`` checkpoint."""
    import torch

    encoder_layers = _count_layers(variables, "encoder")
    decoder_layers = _count_layers(variables, "decoder")
    state: dict[str, np.ndarray] = {}

    state["encoder.conv1.weight"] = variables["encoder/conv1/weight"]
    state["encoder.conv1.bias"] = variables["encoder/conv1/bias"]
    state["encoder.conv2.weight"] = variables["encoder/conv2/weight"]
    state["encoder.conv2.bias"] = variables["encoder/conv2/bias"]
    state["encoder.positional_embedding"] = variables["encoder/position_encodings/encodings"]
    for i in range(encoder_layers):
        source = f"encoder/layer_{i}"
        target = f"encoder.blocks.{i}"
        _map_fused_self_attention(variables, state, f"{source}/self_attention", f"{target}.attn")
        _map_layer_norm(variables, state, f"{source}/self_attention/layer_norm", f"{target}.attn_ln")
        _map_feed_forward(variables, state, f"{source}/ffn", target)
    _map_layer_norm(variables, state, "encoder/layer_norm", "encoder.ln_post")

    state["decoder.token_embedding.weight"] = variables["decoder/embeddings/weight"]
    state["decoder.positional_embedding"] = variables["decoder/position_encodings/encodings"]
    for i in range(decoder_layers):
        source = f"decoder/layer_{i}"
        target = f"decoder.blocks.{i}"
        _map_fused_self_attention(variables, state, f"{source}/self_attention", f"{target}.attn")
        _map_layer_norm(variables, state, f"{source}/self_attention/layer_norm", f"{target}.attn_ln")
        _map_cross_attention(variables, state, f"{source}/attention", f"{target}.cross_attn")
        _map_layer_norm(variables, state, f"{source}/attention/layer_norm", f"{target}.cross_attn_ln")
        _map_feed_forward(variables, state, f"{source}/ffn", target)
    _map_layer_norm(variables, state, "decoder/layer_norm", "decoder.ln")

    embeddings = variables["decoder/embeddings/weight"]
    dims = {
        "n_mels": int(variables["encoder/conv1/weight"].shape[1]),
        "n_audio_ctx": int(variables["encoder/position_encodings/encodings"].shape[0]),
        "n_audio_state": int(variables["encoder/conv1/weight"].shape[0]),
        "n_audio_head": int(variables["encoder/num_heads"]),
        "n_audio_layer": encoder_layers,
        "n_vocab": int(embeddings.shape[0]),
        "n_text_ctx": int(variables["decoder/position_encodings/encodings"].shape[0]),
        "n_text_state": int(embeddings.shape[1]),
        "n_text_head": int(variables["decoder/num_heads"]),
        "n_text_layer": decoder_layers,
    }
    # openai-whisper's released checkpoints store float16 weights; load_model casts them to float32 on CPU.
    model_state_dict = {name: torch.from_numpy(np.ascontiguousarray(array)).half() for name, array in state.items()}
    return {"dims": dims, "model_state_dict": model_state_dict}


def _count_layers(variables: dict[str, np.ndarray], stack: str) -> int:
    pattern = re.compile(rf"^{stack}/layer_(\d+)/")
    indices = {int(match.group(1)) for name in variables if (match := pattern.match(name))}
    return max(indices) + 1


def _map_fused_self_attention(variables, state, source: str, target: str) -> None:
    """Split CTranslate2's fused [query; key; value] projection; openai-whisper's key has no bias."""
    query_w, key_w, value_w = np.split(variables[f"{source}/linear_0/weight"], 3, axis=0)
    query_b, key_b, value_b = np.split(variables[f"{source}/linear_0/bias"], 3, axis=0)
    _check_zero_bias(key_b, f"{source}/linear_0/bias (key part)")

    state[f"{target}.query.weight"] = query_w
    state[f"{target}.query.bias"] = query_b
    state[f"{target}.key.weight"] = key_w
    state[f"{target}.value.weight"] = value_w
    state[f"{target}.value.bias"] = value_b
    state[f"{target}.out.weight"] = variables[f"{source}/linear_1/weight"]
    state[f"{target}.out.bias"] = variables[f"{source}/linear_1/bias"]


def _map_cross_attention(variables, state, source: str, target: str) -> None:
    """Map the query projection and split CTranslate2's fused [key; value] projection."""
    key_w, value_w = np.split(variables[f"{source}/linear_1/weight"], 2, axis=0)
    key_b, value_b = np.split(variables[f"{source}/linear_1/bias"], 2, axis=0)
    _check_zero_bias(key_b, f"{source}/linear_1/bias (key part)")

    state[f"{target}.query.weight"] = variables[f"{source}/linear_0/weight"]
    state[f"{target}.query.bias"] = variables[f"{source}/linear_0/bias"]
    state[f"{target}.key.weight"] = key_w
    state[f"{target}.value.weight"] = value_w
    state[f"{target}.value.bias"] = value_b
    state[f"{target}.out.weight"] = variables[f"{source}/linear_2/weight"]
    state[f"{target}.out.bias"] = variables[f"{source}/linear_2/bias"]


def _map_feed_forward(variables, state, source: str, target: str) -> None:
    state[f"{target}.mlp.0.weight"] = variables[f"{source}/linear_0/weight"]
    state[f"{target}.mlp.0.bias"] = variables[f"{source}/linear_0/bias"]
    state[f"{target}.mlp.2.weight"] = variables[f"{source}/linear_1/weight"]
    state[f"{target}.mlp.2.bias"] = variables[f"{source}/linear_1/bias"]
    _map_layer_norm(variables, state, f"{source}/layer_norm", f"{target}.mlp_ln")


def _map_layer_norm(variables, state, source: str, target: str) -> None:
    state[f"{target}.weight"] = variables[f"{source}/gamma"]
    state[f"{target}.bias"] = variables[f"{source}/beta"]


def _check_zero_bias(bias: np.ndarray, name: str) -> None:
    """Raise ValueError when a key bias is non-zero, since openai-whisper has no place for it."""
    if np.any(bias != 0):
        raise ValueError(f"{name} is not zero, so the model does not match openai-whisper's architecture.")


def convert(model_dir: Path, output: Path) -> None:
    """Write the openai-whisper checkpoint of the CTranslate2 model in ``model_dir`` to ``output``."""
    import torch

    checkpoint = to_openai_checkpoint(read_ct2_variables(model_dir / "model.bin"))
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    torch.save(checkpoint, partial)
    partial.replace(output)


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the conversion."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path, help="CTranslate2 Whisper folder containing model.bin")
    parser.add_argument("output", type=Path, help="path of the .pt checkpoint to write")
    args = parser.parse_args(argv)

    if not (args.model_dir / "model.bin").is_file():
        print(f"error: {args.model_dir / 'model.bin'} not found", file=sys.stderr)
        return 2
    convert(args.model_dir, args.output)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
