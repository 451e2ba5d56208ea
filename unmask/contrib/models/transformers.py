"""transformers models as ``DenoiserModel``s: the adapter, loading, and text in / text out."""

from __future__ import annotations

import hashlib
import inspect
import math
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Sequence

import torch
from attrs import define, field

from unmask.contrib.models.block_diffusion import family_of, load_block_diffusion, mask_id_of
from unmask.core.engine import decode, pad_prompts
from unmask.core.types import DecodeResult

__all__ = ["TransformersDenoiser", "CacheNotSupportedError", "block_causal_mask", "load", "encode_prompts",
           "decode_answers", "decode_text", "weights_hash"]

# Model types adapted from autoregressive checkpoints that keep the next-token shift (Dream: Qwen2.5).
# Compared in lower case: Dream-7B's config says "Dream".
SHIFTED_MODEL_TYPES = frozenset({"dream", "qwen2"})
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def keeps_next_token_shift(config: Any) -> bool:
    """Whether a checkpoint predicts position i + 1 at column i: its ``shift_logits`` if set, else its model
    type or architecture (Dream, Qwen2), in any case."""
    get = config.get if isinstance(config, dict) else lambda key, default=None: getattr(config, key, default)
    if get("shift_logits") is not None:
        return bool(get("shift_logits"))
    names = [str(get("model_type") or "")] + [str(a) for a in get("architectures") or []]
    return any(name.lower() in SHIFTED_MODEL_TYPES or name.lower().startswith("dream") for name in names)


def resolve_dtype(dtype: str | torch.dtype | None) -> str | torch.dtype:
    """``auto`` (the checkpoint's own), a name in DTYPES, a torch dtype; None is float32."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be auto or one of {', '.join(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


class CacheNotSupportedError(ValueError):
    """The model cannot take a KV cache; only the ``none`` cache serves it."""


# The forward argument that takes a KV cache: transformers up to 5.23 calls it ``past_key_values``, 5.24 and
# later ``cache``. The adapter reads the model's signature, so both releases work without a version check.
CACHE_ARGUMENTS = ("past_key_values", "cache")


def cache_argument(forward: Any) -> str | None:
    """The name under which ``forward`` takes a KV cache, or None if it takes none."""
    parameters = inspect.signature(forward).parameters
    return next((name for name in CACHE_ARGUMENTS if name in parameters), None)


@define
class TransformersDenoiser:
    """A transformers model with bidirectional attention, seen as a ``DenoiserModel``.

    Dream-style models (``shift_logits``) predict position i + 1 at i; the adapter shifts their logits
    right by one so that column i always predicts position i, as Dream's own sampler does.

    Block-diffusion models (``block_size`` set: SDAR, Fast-dLLM v2, LLaDA 2.0) attend block-causally:
    blocks of ``block_size`` positions counted from position 0, a position sees its own block and earlier
    ones. The adapter builds that mask from the engine's key mask and position ids (see
    :func:`block_causal_mask`), so the transformers class underneath may be an ordinary causal one.
    """

    model: Any
    mask_token_id: int
    eos_token_id: int
    shift_logits: bool = False
    remote_code: bool = False
    block_size: int | None = None
    cache_argument: str | None = field(init=False)
    accepts_positions: bool = field(init=False)

    def __attrs_post_init__(self) -> None:
        # Remote code has its own cache conventions; only transformers' own classes take ours.
        self.cache_argument = None if self.remote_code else cache_argument(self.model.forward)
        self.accepts_positions = "position_ids" in inspect.signature(self.model.forward).parameters

    @property
    def accepts_cache(self) -> bool:
        return self.cache_argument is not None

    @property
    def accepts_pair_mask(self) -> bool:
        """Whether a (B, 1, Q, K) additive mask reaches attention as given: transformers' own decoder families,
        attending bidirectionally (a block-causal model builds its own mask; remote code may not take one)."""
        return (not self.remote_code and self.block_size is None
                and self.model.config.model_type in PAIR_MASK_MODEL_TYPES)

    @property
    def runs_layers(self) -> bool:
        """Whether :meth:`layer_stack` can run it a layer at a time: transformers' own decoder families of the
        Llama kind, attending bidirectionally."""
        return self.accepts_pair_mask

    @property
    def num_layers(self) -> int | None:
        value = getattr(self.model.config, "num_hidden_layers", None)
        return value if isinstance(value, int) else None

    def layer_stack(self) -> Any:
        """The model a layer at a time (:class:`unmask.contrib.models.layers.LayerStack`)."""
        from unmask.contrib.models.layers import LayerStack

        if not self.runs_layers:
            raise ValueError(f"{type(self.model).__name__} does not run a layer at a time here: that needs a "
                             f"bidirectional transformers model of the families {', '.join(sorted(PAIR_MASK_MODEL_TYPES))}")
        return LayerStack(self.model)

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    @property
    def max_positions(self) -> int | None:
        """Prompt + canvas tokens the model was built for (its config's ``max_position_embeddings``)."""
        value = getattr(getattr(self.model, "config", None), "max_position_embeddings", None)
        return value if isinstance(value, int) else None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def __call__(
        self,
        input_ids: torch.Tensor,
        *,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Any = None,
    ) -> torch.Tensor:
        if self.block_size is not None:
            if position_ids is None or attention_mask is None:
                raise ValueError("a block-causal model needs position_ids and attention_mask for its mask")
            attention_mask = block_causal_mask(attention_mask, position_ids, self.block_size,
                                               self.model.get_input_embeddings().weight.dtype)
        elif attention_mask is not None and attention_mask.dim() == 4:  # additive, in the weights' dtype
            attention_mask = attention_mask.to(self.model.get_input_embeddings().weight.dtype)
        inputs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if position_ids is not None and self.accepts_positions:
            inputs["position_ids"] = position_ids
        if past_key_values is not None:
            if self.cache_argument is None:
                raise CacheNotSupportedError(
                    f"{type(self.model).__name__} cannot take a KV cache "
                    f"({'remote code' if self.remote_code else 'no ' + ' or '.join(CACHE_ARGUMENTS) + ' argument'}); "
                    "use cache='none'"
                )
            inputs.update({self.cache_argument: past_key_values, "use_cache": True})
        elif self.accepts_cache:
            inputs["use_cache"] = False
        logits = self.model(**inputs).logits  # (B, S, V)
        if self.shift_logits:
            logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        return logits


# transformers' decoder families whose attention adds a 4-D mask as given (the bundled models are Llama).
PAIR_MASK_MODEL_TYPES = frozenset({"llama", "qwen2", "qwen3", "mistral"})


def block_causal_mask(keys: torch.Tensor, query_positions: torch.Tensor, block_size: int,
                      dtype: torch.dtype) -> torch.Tensor:
    """(B, 1, Q, K) additive mask: query q sees key k iff k is a real token and block(k) <= block(q), with
    block(p) = p // block_size. ``keys`` (B, K) marks the real keys, which are the canvas columns [0, K) in
    order (every cache manager keeps them so); their positions are counted from it."""
    key_positions = keys.long().cumsum(-1) - 1
    seen = keys.bool()[:, None, :] & (
        key_positions[:, None, :] // block_size <= query_positions.long()[:, :, None] // block_size)
    return torch.zeros(seen.shape, dtype=dtype, device=keys.device).masked_fill(
        ~seen, torch.finfo(dtype).min)[:, None]


def load(
    name_or_path: str | Path,
    *,
    trust_remote_code: bool = False,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
    shift_logits: bool | None = None,
    device_map: Any = None,
    download: bool = False,
    block_size: int | None = None,
) -> tuple[TransformersDenoiser, Any]:
    """Load a dLLM as ``(model, tokenizer)``: a registered model name (``reference``: the bundled model),
    a local checkpoint directory or a Hub id.

    Mask and EOS ids come from the tokenizer, else the config. ``shift_logits`` defaults to
    :func:`keeps_next_token_shift`. ``dtype``: ``auto``, ``float32`` (the default), ``bfloat16`` or
    ``float16``; ``device_map`` is passed to transformers (then ``device`` is not applied).

    Block-diffusion checkpoints are recognised from config.json (SDAR's ``model_type`` "sdar" with
    ``block_size``, Fast-dLLM v2's ``bd_size``, LLaDA 2.0's "llada2_moe", whose block size is the
    ``block_size`` argument, 32 by default): the adapter attends block-causally (see
    :mod:`unmask.contrib.models.block_diffusion`); decode them with ``block_length`` equal to it.
    """
    from safetensors import SafetensorError
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

    from unmask.core.plugins import registry

    source = str(name_or_path)
    # Registered names win over folders of the same name in the working directory (give those as ./name).
    torch_dtype = resolve_dtype(dtype)
    if isinstance(name_or_path, str) and source in registry().names("models"):
        adapter, tokenizer = registry().get("models", source).factory(device=device)
        if isinstance(torch_dtype, torch.dtype):
            adapter.model.to(torch_dtype)
        if shift_logits is not None:
            adapter.shift_logits = shift_logits
        return adapter, tokenizer
    hub = {"local_files_only": not download}
    raw = _raw_config(source, hub)
    family = family_of(raw) if raw is not None else None
    on_cpu = device_map is None and torch.device(device).type == "cpu"
    if family is not None:
        check_model_size(SimpleNamespace(**raw), source, on_cpu=on_cpu)
        model, tokenizer, size = load_block_diffusion(source, raw, family, trust_remote_code=trust_remote_code,
                                                      block_size=block_size, dtype=torch_dtype, device_map=device_map,
                                                      hub=hub)
        model = (model if device_map is not None else model.to(device)).eval()
        eos_id = _required_id(_first_id(tokenizer.eos_token_id, raw.get("eos_token_id")), source, "EOS", "eos")
        mask_id = _required_id(mask_id_of(family, raw, tokenizer), source, "mask", "mask")
        adapter = TransformersDenoiser(
            model=model, mask_token_id=mask_id, eos_token_id=eos_id,
            shift_logits=family.shift_logits if shift_logits is None else shift_logits,
            remote_code=family.native is None, block_size=size,
        )
        return adapter, tokenizer
    if block_size is not None:
        raise ValueError(f"block_size: the model at {source} is not a block-diffusion checkpoint (SDAR, Fast-dLLM v2, "
                         "LLaDA 2.0)")
    config = _load_config(AutoConfig, source, trust_remote_code, hub)
    check_model_size(config, source, on_cpu=on_cpu)
    remote = bool(getattr(config, "auto_map", None))
    architectures = getattr(config, "architectures", None) or []
    if any(name.endswith("ForMaskedLM") for name in architectures):
        loader = AutoModelForMaskedLM
    elif remote:
        loader = AutoModelForCausalLM if "AutoModelForCausalLM" in config.auto_map else AutoModel
    else:
        if getattr(config, "is_causal", True) is not False:
            raise ValueError(
                f"the model at {source} has causal attention; a diffusion LM needs bidirectional attention "
                "(set is_causal: false in its config.json)"
            )
        loader = AutoModelForCausalLM
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code, **hub)
    try:
        model = loader.from_pretrained(source, trust_remote_code=trust_remote_code, dtype=torch_dtype,
                                       device_map=device_map, **hub)
    except (SafetensorError, OSError, RuntimeError) as error:  # truncated or corrupt weights, shapes that do not fit the config
        raise ValueError(f"--model {source}: the weights do not load ({type(error).__name__}: {error})") from error
    model = (model if device_map is not None else model.to(device)).eval()
    mask_id = _required_id(_first_id(tokenizer.mask_token_id, getattr(config, "mask_token_id", None)), source,
                           "mask", "mask")
    eos_id = _required_id(_first_id(tokenizer.eos_token_id, getattr(config, "eos_token_id", None)), source,
                          "EOS", "eos")
    if shift_logits is None:
        shift_logits = keeps_next_token_shift(config)
    adapter = TransformersDenoiser(
        model=model, mask_token_id=mask_id, eos_token_id=eos_id, shift_logits=shift_logits, remote_code=remote
    )
    return adapter, tokenizer


def encode_prompts(tokenizer: Any, prompts: Sequence[str], *, chat: bool | None = None) -> list[list[int]]:
    """Token ids per prompt, through the chat template (a user turn, then the assistant's start) if any."""
    if chat is None:
        chat = bool(getattr(tokenizer, "chat_template", None))
    if chat:
        return [
            list(tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True, return_dict=False
            ))
            for text in prompts
        ]
    return [tokenizer(text)["input_ids"] for text in prompts]


def decode_answers(tokenizer: Any, result: DecodeResult) -> list[str]:
    """Each row's answer: its tokens before the first EOS, special ones included (an ``[UNK]`` or a left
    ``[MASK]`` inside an answer makes it wrong), less trailing end-of-turn markers such as a chat model's
    ``<|eot_id|>`` before its EOS padding."""
    trailing = set(getattr(tokenizer, "all_special_ids", [])) - {tokenizer.unk_token_id,
                                                                  getattr(tokenizer, "mask_token_id", None)}
    answers = []
    for row, length in zip(result.tokens, result.answer_lengths):
        tokens = row[: int(length)].tolist()
        while tokens and tokens[-1] in trailing:
            tokens.pop()
        answers.append(tokenizer.decode(tokens, skip_special_tokens=False).strip())
    return answers


def decode_text(
    model: TransformersDenoiser, tokenizer: Any, prompts: Sequence[str], *, chat: bool | None = None, **kwargs: Any
) -> tuple[list[str], DecodeResult]:
    """Encode prompts, decode with :func:`unmask.decode` (``kwargs``), and return the answers' text."""
    input_ids, attention_mask = pad_prompts(encode_prompts(tokenizer, prompts, chat=chat), model.eos_token_id)
    if kwargs.get("constraint") is not None:
        kwargs.setdefault("tokenizer", tokenizer)
    result = decode(model, input_ids.to(model.device), attention_mask=attention_mask.to(model.device), **kwargs)
    return decode_answers(tokenizer, result), result


def _raw_config(source: str, hub: dict[str, Any]) -> dict[str, Any] | None:
    """config.json as a dict, without instantiating its class (SDAR's model_type is unknown to
    transformers); None where there is none to read, and the ordinary load names the problem."""
    from transformers import PretrainedConfig

    try:
        config, _ = PretrainedConfig.get_config_dict(source, **hub)
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def _looks_like_path(source: str) -> bool:
    """A Hub id is ``name`` or ``owner/name``; anything else that names no directory is a mistyped path."""
    return source.startswith((".", "/", "~")) or source.count("/") > 1 or "\\" in source or source.endswith("/")


def _load_config(auto_config: Any, source: str, trust_remote_code: bool, hub: dict[str, Any]) -> Any:
    from unmask.core.plugins import registry

    path = Path(source).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"--model {source}: is a file; give the checkpoint's directory")
    if not path.exists() and _looks_like_path(source):
        raise FileNotFoundError(f"--model {source}: no such directory")
    if path.is_dir() and not (path / "config.json").is_file():
        raise FileNotFoundError(f"--model {source}: the directory has no config.json (not a transformers checkpoint)")
    try:
        return auto_config.from_pretrained(source, trust_remote_code=trust_remote_code, **hub)
    except OSError as error:
        if path.is_dir() or not hub["local_files_only"]:
            raise ValueError(f"--model {source}: the config does not load ({' '.join(str(error).split())})") from None
        raise ValueError(
            f"--model {source}: neither a registered model ({', '.join(registry().names('models'))}), a checkpoint "
            "directory, nor a Hub id in the local Hugging Face cache; pass --download (download=True) to fetch it"
        ) from None
    except ValueError as error:
        if "trust_remote_code" in str(error) and not trust_remote_code:
            raise ValueError(
                f"the model at {source} ships its own code; pass trust_remote_code=True "
                "(--trust-remote-code) to run it"
            ) from error
        raise


def least_parameters(config: Any) -> int | None:
    """A lower bound on the parameters a config describes (one embedding; per layer the attention's query
    and output projections and two MLP matrices), or None where it lacks the sizes."""
    sizes = [getattr(config, key, None) for key in ("hidden_size", "num_hidden_layers", "vocab_size")]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in sizes):
        return None
    hidden, layers, vocab = sizes
    intermediate = getattr(config, "intermediate_size", None)
    intermediate = intermediate if isinstance(intermediate, int) and intermediate > 0 else hidden
    return vocab * hidden + layers * (2 * hidden * hidden + 2 * hidden * intermediate)


def stored_parameters(directory: Path) -> int | None:
    """The parameters a checkpoint directory's safetensors files hold (read from their headers), or None."""
    from safetensors import SafetensorError, safe_open

    files = sorted(directory.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for path in files:
        try:
            with safe_open(path, framework="pt") as reader:
                total += sum(math.prod(reader.get_slice(name).get_shape()) for name in reader.keys())
        except (SafetensorError, OSError):
            return None  # the load itself says which file is damaged
    return total


def check_model_size(config: Any, source: str, *, on_cpu: bool) -> None:
    """Refuse a config that describes far more than its weights hold, or more than this machine's memory,
    before transformers allocates it (a damaged num_hidden_layers would otherwise run for minutes)."""
    least = least_parameters(config)
    if least is None:
        return
    path = Path(source).expanduser()
    stored = stored_parameters(path) if path.is_dir() else None
    if stored is not None and least > 2 * stored + 1_000_000:
        raise ValueError(f"--model {source}: config.json describes at least {least:,} parameters, but the weights "
                         f"hold {stored:,}; the config does not belong to these weights")
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if on_cpu and least * 2 > memory:  # 2 bytes a parameter even in bfloat16
        raise ValueError(f"--model {source}: config.json describes at least {least:,} parameters, more than this "
                         f"machine's {memory / 2**30:.0f} GiB of memory holds")


def _required_id(token_id: int | None, source: str, name: str, field: str) -> int:
    """A special token's id, or a load error naming where it was looked for (the tokenizer, the config)."""
    if token_id is None:
        raise ValueError(f"the model at {source} has no {name} token: the tokenizer has no {field}_token "
                         f"and the config no {field}_token_id")
    return token_id


def _first_id(*candidates: Any) -> int | None:
    for value in candidates:
        if isinstance(value, (list, tuple)):
            value = value[0] if value else None
        if isinstance(value, int):
            return value
    return None


def weights_hash(model: Any) -> str:
    """sha256 over a model's parameters and buffers (names, dtypes, shapes, bytes): which weights made a result."""
    module = getattr(model, "model", model)
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
