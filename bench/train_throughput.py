"""Training throughput of every architecture, against transformers at the same config, and against the machine.

    python -m bench.train_throughput --quick        about a minute: batch 2 × 128 (on a GPU still 8 × 1024), 3 timed steps
    python -m bench.train_throughput                the measurement: batch 8 × 256 (train_small.py's), 10 steps
    python -m bench.train_throughput --device cuda  the GPU section: 100m presets, reference vs Triton vs upstream
    python -m bench.train_throughput --dtype bf16   both sides' steps under bf16 autocast (the gate stays fp32)

One training step = forward, cross-entropy loss (plus Jamba's and Qwen3-Next's router loss), backward,
AdamW step. Each architecture's `small` preset is timed; where transformers has the same model (llama3,
mamba, mamba2, jamba, griffin and hawk as RecurrentGemma, gated-deltanet and qwen3-next as Qwen3-Next) it
is built from the same config, its weights are copied into ours with the tests' name mappings, and the
pair must agree on the loss and on every parameter's gradient before either is timed. The two sides' steps
are interleaved (ours, theirs, ours, ...) so that both see the same background load, and each reports the
median of its repeats.

Qwen3-Next's gradients are taken from transformers' token-by-token form of the op (the oracle test's
`recurrent_fallback`), its loss from both forms; its chunked form, the default and the one timed, builds
every in-chunk decay as exp(G_t − G_s) of two cumulative sums, which under HF's A_log init (decays up to
about −20 per token) lose fp32's digits: its A_log and dt_bias gradients miss an fp64 evaluation by up to
6.5e-2 (tests/test_oracles_qwen3_next.py), and the concatenated check would hide that behind the other
parameters' gradients. Gating against the recurrent form compares every gradient with a reference that is
itself right; both forms compute the same function, so the timed model is the one checked.

MFU (model FLOPs utilisation) = tokens/s × FLOPs per token (nanohybrid.tools.analysis.training_flops_per_token)
÷ the matmul peak measured in the same run and dtype (the median of large torch.matmul calls).
"""

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from bench.common import arguments, check, figure, measure, save_figure, setup, table, write_report
from nanohybrid import ops
from nanohybrid.config import ARCHITECTURES, ModelConfig
from nanohybrid.model import LanguageModel
from nanohybrid.presets import get_config
from nanohybrid.tools.analysis import training_flops_per_token
from tests import (test_oracles_jamba, test_oracles_llama, test_oracles_mamba, test_oracles_qwen3_next,
                   test_oracles_recurrentgemma)
from tests.oracles import (modeling_jamba, modeling_llama, modeling_mamba, modeling_mamba2, modeling_qwen3_next,
                           modeling_recurrent_gemma, transformers)

TARGETS = {"llama3": 1.0}  # speedup over transformers; every recurrent and hybrid architecture: 1.5
TARGET_MFU = 0.5  # llama3-small
TOKENS_TO_PROJECT = 10e9  # GPU: hours for the 100m presets to train on this many tokens at the measured rate
GATE = 1e-4  # relative error of the loss and of all gradients: the same fp32 math in another order (1e-7 - 1e-5)
RECURRENT_GEMMA = dict(window_convention="keys", scale_embeddings=True, logit_softcap=30.0)  # tests' conventions


@dataclass
class Upstream:
    """How to build transformers' model for one of our configs and read its parameters under our names."""

    build: Callable[[ModelConfig], torch.nn.Module]
    read: Callable[[str, dict, ModelConfig], torch.Tensor]  # (our name, HF tensors by name, config) -> tensor
    our_overrides: dict  # conventions ours must switch to, to be the same function as transformers'
    kwargs: dict  # extra arguments of the HF forward pass
    gradient_form: Callable | None = None  # a context in which transformers computes the gate's gradients instead


def llama(c):
    return modeling_llama.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=c.d_model, intermediate_size=c.d_ff, num_hidden_layers=c.n_layers,
        num_attention_heads=c.n_heads, num_key_value_heads=c.n_kv_heads, rms_norm_eps=c.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta}, max_position_embeddings=c.max_seq_len,
        tie_word_embeddings=c.tie_embeddings, pad_token_id=None))


def mamba(c):
    return modeling_mamba.MambaForCausalLM(transformers.MambaConfig(
        vocab_size=c.vocab_size, hidden_size=c.d_model, num_hidden_layers=c.n_layers, state_size=c.d_state,
        expand=c.ssm_expand, conv_kernel=c.d_conv, time_step_rank=c.mamba_dt_rank, layer_norm_epsilon=c.norm_eps,
        tie_word_embeddings=c.tie_embeddings, pad_token_id=None))


def mamba2(c):
    return modeling_mamba2.Mamba2ForCausalLM(transformers.Mamba2Config(
        vocab_size=c.vocab_size, hidden_size=c.d_model, num_hidden_layers=c.n_layers, num_heads=c.mamba2_n_heads,
        head_dim=c.mamba2_head_dim, state_size=c.d_state, n_groups=c.mamba2_n_groups, expand=c.ssm_expand,
        conv_kernel=c.d_conv, chunk_size=c.chunk_size, layer_norm_epsilon=c.norm_eps,
        tie_word_embeddings=c.tie_embeddings, pad_token_id=None))


def jamba(c):
    return modeling_jamba.JambaForCausalLM(transformers.JambaConfig(
        vocab_size=c.vocab_size, hidden_size=c.d_model, intermediate_size=c.d_ff, num_hidden_layers=c.n_layers,
        num_attention_heads=c.n_heads, num_key_value_heads=c.n_kv_heads, num_experts=c.n_experts,
        num_experts_per_tok=c.experts_per_token, expert_layer_period=2, expert_layer_offset=1, attn_layer_period=8,
        attn_layer_offset=4, mamba_d_state=c.d_state, mamba_d_conv=c.d_conv, mamba_expand=c.ssm_expand,
        mamba_dt_rank=c.mamba_dt_rank, rms_norm_eps=c.norm_eps, tie_word_embeddings=c.tie_embeddings,
        router_aux_loss_coef=c.router_aux_loss_coef, max_position_embeddings=c.max_seq_len, use_cache=False,
        pad_token_id=None))


def recurrent_gemma(c):
    kinds = {"rglru": "recurrent", "attention": "attention"}
    return modeling_recurrent_gemma.RecurrentGemmaForCausalLM(transformers.RecurrentGemmaConfig(
        num_hidden_layers=c.n_layers, vocab_size=c.vocab_size, hidden_size=c.d_model, intermediate_size=2 * c.d_ff,
        num_attention_heads=c.n_heads, num_key_value_heads=c.n_kv_heads, lru_width=c.rglru_width,
        attention_window_size=c.sliding_window or c.max_seq_len, conv1d_width=c.d_conv, logits_soft_cap=c.logit_softcap,
        block_types=[kinds[spec.mixer] for spec in c.layers], rms_norm_eps=c.norm_eps, pad_token_id=None,
        use_cache=False))


def qwen3_next(c):
    """Qwen3NextForCausalLM for `qwen3-next`, and for `gated-deltanet`: every layer linear attention, dense MLPs."""
    kinds = {"gated_deltanet": "linear_attention", "gated_attention": "full_attention"}
    return modeling_qwen3_next.Qwen3NextForCausalLM(transformers.Qwen3NextConfig(
        vocab_size=c.vocab_size, hidden_size=c.d_model, intermediate_size=c.d_ff, num_hidden_layers=c.n_layers,
        num_attention_heads=c.n_heads, num_key_value_heads=c.n_kv_heads, head_dim=c.qk_head_dim,
        linear_num_key_heads=c.gdn_n_heads, linear_num_value_heads=c.gdn_value_heads,
        linear_key_head_dim=c.gdn_head_dim, linear_value_head_dim=c.gdn_v_head_dim, linear_conv_kernel_dim=c.d_conv,
        num_experts=c.n_experts, num_experts_per_tok=c.experts_per_token, moe_intermediate_size=c.d_ff,
        shared_expert_intermediate_size=c.shared_expert_d_ff, norm_topk_prob=c.normalize_expert_weights,
        layer_types=[kinds[spec.mixer] for spec in c.layers],
        mlp_only_layers=[i for i, spec in enumerate(c.layers) if spec.ffn == "mlp"], rms_norm_eps=c.norm_eps,
        router_aux_loss_coef=c.router_aux_loss_coef, max_position_embeddings=c.max_seq_len,
        rope_parameters=dict(rope_type="default", rope_theta=c.rope_theta, partial_rotary_factor=c.rotary_fraction),
        tie_word_embeddings=c.tie_embeddings, use_cache=False, pad_token_id=None))


def by_name(mapping):
    return lambda name, tensors, config: tensors[mapping(name)]


def qwen3_next_weight(name, tensors, config):
    return test_oracles_qwen3_next.hf_weight(name, tensors, config)[0]


UPSTREAM = {
    "llama3": Upstream(llama, by_name(test_oracles_llama.hf_name), {}, {}),
    "mamba": Upstream(mamba, by_name(test_oracles_mamba.hf_name), {}, {}),
    "mamba2": Upstream(mamba2, by_name(test_oracles_mamba.hf_name), {}, {}),
    "jamba": Upstream(jamba, lambda name, tensors, c: test_oracles_jamba.hf_weight(name, tensors, c.d_ff)[0], {},
                      dict(output_router_logits=True)),
    "griffin": Upstream(recurrent_gemma, by_name(test_oracles_recurrentgemma.hf_name), RECURRENT_GEMMA, {}),
    "hawk": Upstream(recurrent_gemma, by_name(test_oracles_recurrentgemma.hf_name), RECURRENT_GEMMA, {}),
    "gated-deltanet": Upstream(qwen3_next, qwen3_next_weight, dict(norm_offset=True), {},
                               test_oracles_qwen3_next.recurrent_fallback),
    "qwen3-next": Upstream(qwen3_next, qwen3_next_weight, {}, dict(output_router_logits=True),
                           test_oracles_qwen3_next.recurrent_fallback),
}


def training_step(model, optimizer, loss_of, device, bf16: bool):
    """Forward (under bf16 autocast if `bf16`, as train_small.py --dtype bf16 runs it), backward, AdamW."""
    def step():
        with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            loss = loss_of(model)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def with_kernels(selection: str, function):
    """`function` run with every op of nanohybrid/ops.py set to `selection` ("auto": the default rule)."""
    def run():
        with ops.use(**{op: selection for op in ops.OPS}):
            return function()
    return run


def gate(ours, hf, our_loss_of, their_loss_of, read, gradient_form=None) -> bool:
    """Same loss and same gradients (all parameters, under our names, concatenated) on the benchmark batch.
    With a `gradient_form`, transformers' loss is checked in its default form (the one timed) and in that one,
    and its gradients are taken in that one."""
    our_loss, ok = our_loss_of(ours), True
    if gradient_form:
        with torch.no_grad():
            ok = check("loss, transformers' default form", our_loss, their_loss_of(hf), GATE)
    with gradient_form() if gradient_form else contextlib.nullcontext():
        their_loss = their_loss_of(hf)
    our_loss.backward()
    their_loss.backward()
    their_grads = {name: p.grad for name, p in hf.named_parameters()}
    names = [name for name, _ in ours.named_parameters()]
    grads = torch.cat([ours.get_parameter(name).grad.flatten() for name in names])
    expected = torch.cat([read(name, their_grads, ours.config).flatten() for name in names])
    ok &= check("loss", our_loss, their_loss, GATE) & check("gradients", grads, expected, GATE)
    ours.zero_grad(set_to_none=True)
    hf.zero_grad(set_to_none=True)
    return ok


def matmul_peak(n: int, device, repeats: int, dtype: torch.dtype) -> float:
    """FLOP/s of an (n × n) @ (n × n) matmul in `dtype`: the machine's practical limit at this thread count."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    timing = measure({"matmul": lambda: torch.matmul(a, b)}, device, warmup=2, repeats=max(repeats, 10))["matmul"]
    return 2 * n**3 / timing.median


def run(arch: str, size: str, args, device, peak: float, kernels: dict[str, str]) -> list[list]:
    """One architecture: our model under each kernel selection (label -> selection), and transformers' model
    where it has one."""
    upstream = UPSTREAM.get(arch)
    config = get_config(f"{arch}-{size}", **(upstream.our_overrides if upstream else {}))
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, config.vocab_size, (args.batch, args.seq_len), generator=generator).to(device)
    targets = torch.cat([tokens[:, 1:], torch.full_like(tokens[:, :1], -100)], dim=1)  # HF shifts its labels itself

    def our_loss(model):
        return model(tokens, targets=targets).loss

    def their_loss(model):
        return model(input_ids=tokens, labels=tokens, use_cache=False, **upstream.kwargs).loss

    torch.manual_seed(0)
    ours = LanguageModel(config).to(device).train()
    steps, passed = {}, {}
    if upstream:
        torch.manual_seed(0)
        hf = upstream.build(config).to(device).train()
        hf_tensors = dict(hf.named_parameters())
        ours.load_state_dict({name: upstream.read(name, hf_tensors, config).detach().clone()
                              for name in ours.state_dict()})
        for label, selection in kernels.items():
            print(f"{arch}: {label} against transformers' {type(hf).__name__}")
            passed[label] = with_kernels(selection, lambda: gate(ours, hf, our_loss, their_loss, upstream.read,
                                                                    upstream.gradient_form))()
        steps["transformers"] = training_step(hf, torch.optim.AdamW(hf.parameters(), lr=1e-4), their_loss, device,
                                              args.bf16)
    else:
        print(f"{arch}: no transformers counterpart")
    optimizer = torch.optim.AdamW(ours.parameters(), lr=1e-4)
    for label, selection in kernels.items():
        steps[label] = with_kernels(selection, training_step(ours, optimizer, our_loss, device, args.bf16))
    timings = measure(steps, device, args.warmup, args.repeats)
    tokens_per_step = args.batch * args.seq_len
    flops = training_flops_per_token(config, args.seq_len)
    theirs = timings.get("transformers")
    rows = []
    for name, timing in timings.items():
        throughput = tokens_per_step / timing.median
        if name == "transformers":
            speedup = "1"
        elif theirs is None:
            speedup = "–"
        elif not passed[name]:
            speedup = "check failed"
        else:
            speedup = f"{theirs.median / timing.median:.2f}× (target {TARGETS.get(arch, 1.5)}×)"
        rows.append([f"`{arch}-{size}`", name, timing, f"{throughput:,.0f}", speedup, f"{flops / 1e6:.1f}",
                     f"{throughput * flops / peak:.1%}"])
    return rows


def plot(rows: list[list], name: str) -> None:
    fig, (axis,) = figure(1, 1)
    labels = [f"{row[0].strip('`')}\n{row[1]}" for row in rows]
    axis.barh(labels[::-1], [float(row[3].replace(",", "")) for row in rows][::-1],
              color=["tab:gray" if row[1] == "transformers" else "tab:blue" for row in rows][::-1])
    axis.set(xlabel="training tokens/s (median)", title="Training throughput")
    axis.tick_params(axis="y", labelsize=7)
    fig.set_size_inches(7, 0.35 * len(rows) + 1.5)
    save_figure(fig, name)


def main() -> None:
    parser = arguments(__doc__, "small batch, few repeats")
    parser.add_argument("--arch", nargs="*", default=list(ARCHITECTURES))
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"],
                        help="bf16: both sides' timed steps under torch.autocast; the correctness gate stays fp32")
    args = parser.parse_args()
    args.bf16 = args.dtype == "bf16"
    device = setup(args.threads, args.device)
    gpu = device.type == "cuda"
    args.batch, args.seq_len = (8, 1024) if gpu else (2, 128) if args.quick else (8, 256)
    args.warmup, args.repeats = (1, 3) if args.quick else (2, 10)
    size = "100m" if gpu else "small"
    kernels = {"ours (reference)": "reference", "ours (triton)": "triton"} if gpu else {"ours": "auto"}
    n = 1024 if args.quick else 4096 if gpu else 2048
    peak = matmul_peak(n, device, args.repeats, torch.bfloat16 if args.bf16 else torch.float32)
    print(f"{args.dtype} matmul peak ({n}×{n}): {peak / 1e9:.1f} GFLOP/s")
    rows = []
    for arch in args.arch:  # the report is rewritten after each one, so that a run cut short keeps what it measured
        rows += run(arch, size, args, device, peak, kernels)
        report(rows, args, size, f"{args.dtype} matmul peak ({n}×{n}, same threads): {peak / 1e9:.1f} GFLOP/s", gpu)


def report(rows: list[list], args, size: str, peak: str, gpu: bool) -> None:
    """bench/results/train_throughput[_gpu][_bf16][_quick].md and .png from the rows measured so far."""
    headers = ["preset", "implementation", "step: median [IQR]", "tokens/s", "speedup vs transformers", "MFLOPs/token",
               "MFU"]
    if gpu:  # the one-GPU reproduction's budget: SmolLM-Corpus at 10B tokens
        headers.append("hours for 10B tokens")
        rows = [row + [f"{TOKENS_TO_PROJECT / float(row[3].replace(',', '')) / 3600:,.1f}"] for row in rows]
    llama = [row for row in rows if row[0] == f"`llama3-{size}`" and row[1].startswith("ours")]
    verdict = f"llama3-{size} MFU {llama[0][6]} (target ≥{TARGET_MFU:.0%})" if llama else ""
    precision = "bf16 autocast on both sides" if args.bf16 else "fp32"
    settings = (f"Batch {args.batch} × {args.seq_len} tokens, {precision}, {args.warmup} warm-up and {args.repeats} timed "
                f"steps each (interleaved between the implementations of one preset), AdamW. {peak}. Correctness "
                f"gate: loss and all gradients within relative error {GATE:.0e} of transformers' after a weight copy, "
                f"in fp32. {verdict}")
    name = "train_throughput" + ("_gpu" if gpu else "") + ("_bf16" if args.bf16 else "") + ("_quick" if args.quick else "")
    write_report(name, "Training throughput", settings, [table(headers, rows)])
    plot(rows, name)


if __name__ == "__main__":
    main()
