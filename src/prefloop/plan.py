"""The memory planner's arithmetic: bytes per GPU of a training run, term by term, under prefloop's own
precision and placement policy. Imports no torch (`prefloop plan` answers in a fraction of a second, on any
machine); the command line is in prefloop.plan_cli, the method in docs/SCALING.md.

What the terms follow (each a fact of the code, not of training in general):
- trained models keep fp32 master weights in every precision (models/loading.py), with fp32 gradients and
  AdamW's two fp32 moments per trainable parameter; bf16 / fp16 are autocast;
- frozen models (the reference policy; the reward model during RL) are bf16 when the computation is bf16,
  fp32 otherwise (runtime/accel.py: frozen_dtype);
- LoRA trains the adapter (and a reward model's score head) only, as fp32 masters; the frozen base weights
  are bf16 under a bf16 computation, fp32 otherwise (models/lora.py: frozen_base_dtype), and the reference
  is the policy with its adapter disabled: no second copy;
- PPO's critic is a trained copy of the reward model (or, with LoRA, an adapter on it), or a value head on
  the policy's trunk; its forward and backward share one loss with the policy's, so both sets of
  activations are alive at once;
- DPO computes the reference log-probs in one pass before training and frees the reference model;
- log-probs go through the output head a chunk of positions at a time (rl/logprobs.py: CHUNK_ELEMENTS);
- the sampler preallocates the KV cache of one rollout micro-batch for prompt + response.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from prefloop.errors import ConfigError

GiB = float(2**30)
FP32 = 4
CHUNK_ELEMENTS = 1 << 26  # rl/logprobs.py: elements of one chunk's (positions, vocabulary) logits
RECIPES = ("sft", "reward", "dpo", "ppo", "grpo", "rloo")


@dataclass(frozen=True)
class ModelShape:
    """What the memory of a decoder-only transformer depends on (the fields of a transformers config)."""

    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied: bool  # input embedding and output head share one matrix
    head_dim: int = 0  # 0: hidden / heads
    qkv_bias: bool = False  # Qwen2 has biases on q, k and v

    @property
    def hd(self) -> int:
        return self.head_dim or self.hidden // self.heads

    @property
    def q_dim(self) -> int:
        return self.heads * self.hd

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.hd

    def layer_params(self) -> int:
        attn = self.hidden * (self.q_dim + 2 * self.kv_dim) + self.q_dim * self.hidden
        bias = (self.q_dim + 2 * self.kv_dim) if self.qkv_bias else 0
        return attn + bias + 3 * self.hidden * self.intermediate + 2 * self.hidden  # + 2 RMSNorm weights

    def embedding_params(self) -> int:
        return self.vocab * self.hidden

    def lm_params(self) -> int:
        """A causal LM: embedding, layers, final norm, and the output head unless tied to the embedding."""
        head = 0 if self.tied else self.embedding_params()
        return self.embedding_params() + self.layers * self.layer_params() + self.hidden + head

    def reward_params(self) -> int:
        """A reward model of this shape: the same trunk with a one-output score head instead of the LM head."""
        return self.embedding_params() + self.layers * self.layer_params() + self.hidden + self.hidden

    def lora_params(self, r: int) -> int:
        """Adapter weights of rank r on every linear projection of the attention and MLP blocks (prefloop's
        default targets): r * (inputs + outputs) per projection."""
        h, i = self.hidden, self.intermediate
        per_layer = (h + self.q_dim) * 2 + (h + self.kv_dim) * 2 + (h + i) * 3
        return r * per_layer * self.layers


# Shapes from the models' published config.json files (no download: the numbers are written here).
PRESETS: dict[str, ModelShape] = {
    "qwen2-0.5b": ModelShape("Qwen2-0.5B", 24, 896, 14, 2, 4864, 151936, tied=True, qkv_bias=True),
    "llama-3.2-1b": ModelShape("Llama-3.2-1B", 16, 2048, 32, 8, 8192, 128256, tied=True, head_dim=64),
    "llama-3-8b": ModelShape("Llama-3-8B", 32, 4096, 32, 8, 14336, 128256, tied=False),
    "llama-2-13b": ModelShape("Llama-2-13B", 40, 5120, 40, 40, 13824, 32000, tied=False),
}
SIZE_NAMES = {"qwen2-0.5b": "0.5B", "llama-3.2-1b": "1B", "llama-3-8b": "8B", "llama-2-13b": "13B"}


def shape_from_config(cfg: dict, name: str, where: str = "config.json") -> ModelShape:
    """The shape of a transformers config (a dict as in config.json); one-line errors name the field."""
    cfg = cfg.get("text_config") or cfg  # multimodal configs keep the language model's shape here
    if any(k in cfg for k in ("num_experts", "num_local_experts", "n_routed_experts")):
        raise ConfigError(f"{where}: mixture-of-experts models are not modelled by the planner")

    def get(key: str, default=None):
        value = cfg.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{where}: field '{key}' must be a positive integer, got {value!r}")
        return value

    heads = get("num_attention_heads")
    hidden = get("hidden_size")
    head_dim = cfg.get("head_dim") or 0
    return ModelShape(
        name=name, layers=get("num_hidden_layers"), hidden=hidden, heads=heads,
        kv_heads=get("num_key_value_heads", heads), intermediate=get("intermediate_size"), vocab=get("vocab_size"),
        tied=bool(cfg.get("tie_word_embeddings", False)), head_dim=head_dim if isinstance(head_dim, int) else 0,
        qkv_bias=cfg.get("model_type") == "qwen2" or bool(cfg.get("attention_bias", False)))


def load_shape(model: str) -> ModelShape:
    """A preset name (case-insensitive), a model directory with config.json, or a config.json file."""
    if model.lower() in PRESETS:
        return PRESETS[model.lower()]
    path = Path(model)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise ConfigError(f"--model {model}: neither a preset ({', '.join(PRESETS)}) nor a directory with "
                          "config.json nor a config.json file")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return shape_from_config(cfg, path.parent.name or str(path), str(path))


@dataclass(frozen=True)
class Setup:
    """One run as the planner sees it; option names as the trainers' (per-process sizes are derived)."""

    recipe: str
    precision: str = "bf16"  # fp32, bf16 or fp16 (the computation; weights stay fp32)
    lora_r: int = 0
    gradient_checkpointing: bool = False
    attn_implementation: str = "sdpa"  # eager keeps the (heads, positions) attention probabilities
    processes: int = 1
    sharding: str = "none"  # none (DDP: every process holds everything) or fsdp2
    batch_size: int = 16  # global, as the trainers count it (sequences, pairs or completions)
    micro_batch_size: int | None = None  # per process; None: the process's whole share of --batch-size
    max_length: int = 256  # prompt + response tokens (the padded length of a batch at most)
    max_new_tokens: int = 32
    rollout_batch_size: int = 64
    rollout_micro_batch_size: int | None = None
    critic: str = "reward"  # ppo: reward (a trained copy of the reward model) or value-head
    kl_coef: float = 0.05  # grpo, rloo: 0 loads no reference
    precompute_reference: bool = True  # dpo
    reward_shape: ModelShape | None = None  # default: the policy's shape

    @property
    def micro(self) -> int:
        per_process = max(1, self.batch_size // self.processes)
        return min(self.micro_batch_size or per_process, per_process)  # a larger micro-batch is the whole share

    @property
    def accumulating(self) -> bool:
        """Several micro-batches per optimizer step on each process (gradient accumulation)."""
        return self.micro < max(1, self.batch_size // self.processes)

    @property
    def rollout_micro(self) -> int:
        return self.rollout_micro_batch_size or max(1, self.rollout_batch_size // self.processes)

    @property
    def shards(self) -> int:
        return self.processes if self.sharding == "fsdp2" else 1

    @property
    def compute_bytes(self) -> int:
        return FP32 if self.precision == "fp32" else 2

    @property
    def frozen_bytes(self) -> int:
        """Frozen models, and a LoRA model's frozen base: bf16 under bf16 (fp16 weights could overflow)."""
        return 2 if self.precision == "bf16" else FP32


@dataclass
class Term:
    name: str
    bytes: float
    phase: str  # "always", or the phase whose peak it belongs to: "train", "step", "sample", "reference"
    detail: str = ""


@dataclass
class Plan:
    shape: ModelShape
    setup: Setup
    terms: list[Term] = field(default_factory=list)

    def phase_total(self, phase: str) -> float:
        return sum(t.bytes for t in self.terms if t.phase in ("always", phase))

    @property
    def phases(self) -> list[str]:
        return sorted({t.phase for t in self.terms if t.phase != "always"} or {"train"})

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=self.phase_total)

    @property
    def peak(self) -> float:
        """Bytes per GPU at the worst moment: what is always held, plus the largest phase."""
        return self.phase_total(self.peak_phase)

    def term(self, name: str) -> float:
        return sum(t.bytes for t in self.terms if t.name == name)


# -- activations ---------------------------------------------------------------------------------------------


def layer_activation_bytes(s: ModelShape, setup: Setup, seq: int) -> float:
    """Bytes one transformer block keeps for the backward pass, per token.

    The method of Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models",
    section 4.1: count the tensors each operation saves), applied to the blocks prefloop trains (RMSNorm,
    grouped-query attention through a fused kernel, SwiGLU MLP, no dropout) instead of GPT's:
    - each of the two RMSNorms saves its input and the normalised values in fp32 (it upcasts), and its
      output is cast to the compute dtype for the projections that follow: 2 x (2h fp32 + h);
    - attention saves q, k, v (h + 2 kv) and its output, which o_proj saves again after the head transpose
      copies it (2h); a fused kernel (sdpa) keeps no (heads, positions) matrix; eager adds the fp32
      softmax probabilities and their compute-dtype copy, heads x positions per token;
    - the SwiGLU MLP saves gate and up outputs, silu(gate) and the product that down_proj reads: 4 I;
    - LoRA adds each adapter's rank-r intermediate (7 projections).
    For GPT's shape (I = 4h, kv = h) this counts 27 h values per token, against the paper's 34 h bytes in
    16 bits with dropout masks (17 h values): SwiGLU keeps more than GeLU's MLP.
    """
    c = setup.compute_bytes
    fp32_part = 4 * s.hidden * FP32
    compute_part = (2 * s.hidden + s.q_dim + 2 * s.kv_dim + 2 * s.hidden + 4 * s.intermediate) * c
    lora = 7 * setup.lora_r * c if setup.lora_r else 0
    eager = s.heads * seq * (FP32 + c) if setup.attn_implementation == "eager" else 0
    return fp32_part + compute_part + lora + eager


def trunk_activation_bytes(s: ModelShape, setup: Setup, tokens: int, seq: int) -> float:
    """One model's saved activations for `tokens` tokens of sequences of length `seq`: every block, or with
    gradient checkpointing each block's fp32 input plus one block recomputed in the backward pass; plus the
    final norm and the hidden states the output head reads (4h fp32 per token)."""
    per_layer = layer_activation_bytes(s, setup, seq)
    if setup.gradient_checkpointing:
        blocks = tokens * (s.layers * s.hidden * FP32 + per_layer)
    else:
        blocks = tokens * s.layers * per_layer
    return blocks + tokens * 4 * s.hidden * FP32


def logits_chunk_bytes(s: ModelShape, setup: Setup, positions: int) -> float:
    """The output head's working set: one chunk of (positions, vocabulary) logits, in fp32 three times over
    (the logits, the log-softmax that cross-entropy keeps, the logits' gradient; the chunk is recomputed
    in the backward pass), plus the compute-dtype head output under autocast."""
    rows = min(positions, max(1, CHUNK_ELEMENTS // s.vocab))
    extra = setup.compute_bytes if setup.compute_bytes != FP32 else 0
    return rows * s.vocab * (3 * FP32 + extra)


def no_grad_forward_bytes(s: ModelShape, setup: Setup, rows: int, seq: int) -> float:
    """A forward without gradients (scoring, reference, prefill): one block's largest intermediates alive at
    once (the residual stream, q/k/v, gate and up outputs) and a logits chunk over the rows' positions."""
    block = rows * seq * (3 * s.hidden + s.q_dim + 2 * s.kv_dim + 2 * s.intermediate) * setup.compute_bytes
    return block + logits_chunk_bytes(s, setup, rows * seq)


# -- the terms of a run ---------------------------------------------------------------------------------------


def _models(shape: ModelShape, setup: Setup) -> tuple[list[tuple[str, int, int]], list[tuple[str, int]]]:
    """(trained models as (name, frozen base parameters, trainable parameters), frozen models as (name,
    parameters)). Only a LoRA model has a frozen base: all of the loaded model, besides its adapter and the
    trained copy of a score head (the original copy stays, frozen)."""
    rm = setup.reward_shape or shape
    r = setup.lora_r

    def reward_like(name: str) -> tuple[str, int, int]:
        return (name, rm.reward_params(), rm.lora_params(r) + rm.hidden) if r else (name, 0, rm.reward_params())

    if setup.recipe == "reward":
        return [reward_like("reward model")], []
    value_head = shape.hidden + 1 if setup.recipe == "ppo" and setup.critic == "value-head" else 0
    policy = ("policy", shape.lm_params(), shape.lora_params(r) + value_head) if r else \
        ("policy", 0, shape.lm_params() + value_head)
    trained, frozen = [policy], []
    if setup.recipe == "ppo" and setup.critic == "reward":
        trained.append(reward_like("critic"))
    wants_reference = setup.recipe in ("ppo", "dpo") or (setup.recipe in ("grpo", "rloo") and setup.kl_coef > 0)
    if wants_reference and not r:  # with LoRA the reference is the policy with its adapter disabled
        frozen.append(("reference", shape.lm_params()))
    if setup.recipe in ("ppo", "grpo", "rloo"):
        frozen.append(("reward model", rm.reward_params()))
    return trained, frozen


def _gradients(nbytes: float, setup: Setup, shard: str) -> Term:
    """Gradients are set to None after every optimizer step, and a backward pass frees each block's
    activations as it fills that block's gradients: with one micro-batch per step the two peak at different
    moments (activations when the backward starts, gradients at the step). Accumulating micro-batches keeps
    the gradients alive through the next forward and backward."""
    if setup.accumulating:
        return Term("gradients", nbytes, "train", f"fp32, kept across the micro-batches of a step{shard}")
    return Term("gradients", nbytes, "step", f"fp32, at the optimizer step (one micro-batch per step){shard}")


def _fsdp2_gathered(shape: ModelShape, setup: Setup, dpo_pass: bool) -> list[Term]:
    """The units FSDP2 gathers whole: the largest (a block or the embedding), current and prefetched."""
    unit = max(shape.layer_params(), shape.embedding_params())
    if setup.lora_r:  # a LoRA unit is frozen base weights in their dtype; its gradients are the adapter's
        unit_bytes = setup.frozen_bytes
        word = "bf16" if unit_bytes == 2 else "fp32"
        train = Term("FSDP2 gathered", 2 * unit * unit_bytes, "train",
                     f"two units of the frozen base gathered in {word} (current + prefetched)")
    else:
        unit_bytes = FP32
        train = Term("FSDP2 gathered", 3 * unit * FP32, "train",
                     "two units gathered in fp32 (current + prefetched) and one unit's unsharded gradients; "
                     "the largest unit (a block or the embedding)")
    forward_only = ["sample"] if setup.recipe in ("ppo", "grpo", "rloo") else ["reference"] if dpo_pass else []
    return [train] + [Term("FSDP2 gathered", 2 * unit * unit_bytes, ph, "two units gathered for the forward")
                      for ph in forward_only]


def _static_terms(shape: ModelShape, setup: Setup) -> list[Term]:
    trained, frozen = _models(shape, setup)
    n = setup.shards
    shard = f" / {n} (FSDP2)" if n > 1 else ""
    trainable = sum(t for _, _, t in trained)
    names = " + ".join(f"{name} {t / 1e6:,.1f}M" for name, _, t in trained)
    word = "bf16" if setup.frozen_bytes == 2 else "fp32"
    terms = [Term("weights", trainable * FP32 / n, "always",
                  f"fp32 masters: {names}{' (adapters and heads)' if setup.lora_r else ''}{shard}"),
             Term("optimizer states", trainable * 2 * FP32 / n, "always",
                  f"AdamW, 2 x fp32 per trainable parameter ({trainable / 1e6:,.2f}M){shard}"),
             _gradients(trainable * FP32 / n, setup, shard)]
    if setup.lora_r:
        bases = " + ".join(f"{name} {b / 1e6:,.1f}M" for name, b, _ in trained)
        terms.append(Term("frozen base", sum(b for _, b, _ in trained) * setup.frozen_bytes / n, "always",
                          f"LoRA: {bases} in {word}{shard}"))
    dpo_pass = setup.recipe == "dpo" and setup.precompute_reference
    for name, p in frozen:
        phase = "reference" if dpo_pass and name == "reference" else "always"
        note = ", loaded for the one pass before training" if phase == "reference" else ""
        terms.append(Term(f"frozen {name}", p * setup.frozen_bytes / n, phase,
                          f"{p / 1e6:,.1f}M in {word}{note}{shard}"))
    if n > 1:
        terms += _fsdp2_gathered(shape, setup, dpo_pass)
    return terms


def _train_terms(shape: ModelShape, setup: Setup) -> list[Term]:
    """Activations and the output head's chunk of one micro-batch's forward and backward."""
    rm = setup.reward_shape or shape
    seq, rows = setup.max_length, setup.micro
    if setup.recipe in ("reward", "dpo"):
        rows *= 2  # chosen and rejected in one batch
    tokens = rows * seq
    ckpt = ", gradient checkpointing" if setup.gradient_checkpointing else ""
    where = f"{rows} sequences x {seq} tokens per micro-batch{ckpt}"
    if setup.recipe == "reward":
        return [Term("activations", trunk_activation_bytes(rm, setup, tokens, seq), "train", where)]
    terms = [Term("activations", trunk_activation_bytes(shape, setup, tokens, seq), "train", f"policy: {where}")]
    if setup.recipe == "ppo" and setup.critic == "reward":
        terms.append(Term("activations", trunk_activation_bytes(rm, setup, tokens, seq), "train",
                          "critic: the same tokens, one loss with the policy's"))
    # RL takes log-probs of the response positions only; SFT and DPO of every position that may be a response.
    positions = rows * setup.max_new_tokens if setup.recipe in ("ppo", "grpo", "rloo") else tokens
    terms.append(Term("logits chunk", logits_chunk_bytes(shape, setup, positions), "train",
                      f"min({positions}, {CHUNK_ELEMENTS} / vocabulary) positions"))
    return terms


def _sample_terms(shape: ModelShape, setup: Setup) -> list[Term]:
    """The rollout phase: the preallocated KV cache of one rollout micro-batch and the prefill's working set."""
    rows, seq = setup.rollout_micro, setup.max_length
    prompt = max(1, seq - setup.max_new_tokens)
    kv = rows * seq * shape.layers * 2 * shape.kv_dim * setup.compute_bytes
    block = rows * prompt * (3 * shape.hidden + shape.q_dim + 2 * shape.kv_dim + 2 * shape.intermediate)
    prefill = block * setup.compute_bytes + rows * shape.vocab * 2 * FP32  # logits of the last position only
    return [Term("KV cache", kv, "sample", f"{rows} sequences x {seq} positions x {shape.layers} layers x K and V"),
            Term("prefill", prefill, "sample", f"one block's working set over {rows} x {prompt} prompt tokens")]


def _reference_terms(shape: ModelShape, setup: Setup) -> list[Term]:
    rows = 2 * setup.micro
    return [Term("reference forward", no_grad_forward_bytes(shape, setup, rows, setup.max_length), "reference",
                 f"no gradients, {rows} sequences at a time")]


def plan(shape: ModelShape, setup: Setup) -> Plan:
    """Every memory term of `setup` on one GPU (see the module's docstring for the policy followed)."""
    if setup.recipe not in RECIPES:
        raise ConfigError(f"--recipe must be one of {', '.join(RECIPES)}, got {setup.recipe!r}")
    if setup.sharding not in ("none", "fsdp2"):
        raise ConfigError(f"--sharding must be none or fsdp2, got {setup.sharding!r}")
    out = Plan(shape, setup, _static_terms(shape, setup) + _train_terms(shape, setup))
    if setup.recipe in ("ppo", "grpo", "rloo"):
        out.terms += _sample_terms(shape, setup)
    if setup.recipe == "dpo" and setup.precompute_reference:
        out.terms += _reference_terms(shape, setup)
    return out
