"""The fair reference for bf16 training: PyTorch's gradients of the model the bf16 GPU backend actually holds.

usage: python3 tests/data/train_bf16/make.py OUT MODEL_DIR...   (on the device machine: torch + transformers 5.17;
       BAMBA_REPO=<repo root> when the script runs from a copy outside the repo)

The GPU's bf16 mode keeps the ≥ 2-D weights (matmuls, embedding, lm_head, conv) in bf16 and the 1-D ones (A_log, D,
dt_bias, norms, biases) in fp32, so its gradients differ from those of the fp32 fixture by the weights' rounding
alone (2.3e-2 / 1.3e-1 relative L2 on bamba-tiny-a / -b, docs/numerics.md) before any bf16 arithmetic. This script
takes each fixture model, rounds exactly those weights to bf16, and writes OUT/<name>/:
  config.json                  the fixture's
  model.safetensors            the rounded model: ≥ 2-D tensors as BF16, 1-D as F32 (HF names; about half the size)
  grads.safetensors            batch.input_ids, batch.labels (the fixture batch of tests/data/train/<name>, so the
                               two references score the same tokens), step0.loss, grad.<HF name> (fp32)
  reference.json               what was computed, and the gradients' distance to the fp32 model's
The loss and gradients are computed from those weights in float64 where HF's code allows it (else float32) on the
CPU, HF's loss (mean cross-entropy over the shifted labels that are not -100). CudaTrainer.Bf16GradientsEqualPyTorchOnTheSameWeights
(tests/cuda_train_test.cpp; BAMBA_TRAIN_BF16_REF=OUT if not here) loads the rounded model on the GPU in bf16 and holds every gradient to 3e-2.
"""
import json, os, sys
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
# the fp32 fixture's reference (its batch): in the repo beside this folder, or under $BAMBA_REPO when this script
# was copied elsewhere to run
REPO = os.environ.get("BAMBA_REPO") or os.path.join(HERE, "..", "..", "..")
FIXTURE_BATCH = os.path.join(REPO, "tests", "data", "train", "{}", "train_expected.safetensors")


def load(mdir):
    model = AutoModelForCausalLM.from_pretrained(mdir, dtype=torch.float32, attn_implementation="eager")
    with torch.no_grad():  # the bf16 backend's rounding: round-to-nearest-even of every ≥ 2-D weight
        for _, p in model.named_parameters():
            if p.dim() >= 2:
                p.copy_(p.to(torch.bfloat16).to(torch.float32))
    return model


def grads(model, ids, labels):
    model.zero_grad(set_to_none=True)
    out = model(input_ids=ids, labels=labels, use_cache=False)
    out.loss.backward()
    g = {n: p.grad.detach().float().contiguous().clone() for n, p in model.named_parameters()}
    return float(out.loss), g


OUT = sys.argv[1]
for mdir in sys.argv[2:]:
    name = os.path.basename(mdir.rstrip("/"))
    ref = load_file(FIXTURE_BATCH.format(name))
    ids, labels = ref["batch.input_ids"].long(), ref["batch.labels"].long()
    model = load(mdir)
    # the rounded model as bamba loads it: the fixture's tensor names, ≥ 2-D in BF16 (exact), 1-D in F32
    names = set(load_file(os.path.join(mdir, "model.safetensors")).keys()) if os.path.exists(
        os.path.join(mdir, "model.safetensors")) else set(json.load(open(os.path.join(mdir, "model.safetensors.index.json")))["weight_map"])
    sd = model.state_dict()
    missing = sorted(names - set(sd))
    if missing:
        sys.exit(f"{name}: the HF model has no tensors {missing[:5]}")
    weights = {n: (sd[n].to(torch.bfloat16) if sd[n].dim() >= 2 else sd[n].float()).contiguous().clone() for n in sorted(names)}
    prec = "float64"
    try:  # float64 where HF's code allows it (its gated norm computes in fp32 anyway); else float32
        model = model.double().train()
        loss, g = grads(model, ids, labels)
    except Exception as e:
        print(name, "float64 failed, using float32:", repr(e)[:200], flush=True)
        model = load(mdir).train()
        prec = "float32"
        loss, g = grads(model, ids, labels)
    os.makedirs(os.path.join(OUT, name), exist_ok=True)
    save_file(weights, os.path.join(OUT, name, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(mdir, "config.json")) as f:
        cfg = json.load(f)
    json.dump(cfg, open(os.path.join(OUT, name, "config.json"), "w"), indent=1)
    t = {"batch.input_ids": ref["batch.input_ids"], "batch.labels": ref["batch.labels"],
         "step0.loss": torch.tensor(loss, dtype=torch.float32)}
    for n, v in g.items():
        t[f"grad.{n}"] = v
    save_file(t, os.path.join(OUT, name, "grads.safetensors"))
    # how far the rounding alone moved PyTorch's gradients (the fp32 fixture's, where it has them)
    moved = {}
    for n, v in g.items():
        k = f"grad.{n}"
        if k in ref:
            r = ref[k].double()
            moved[n] = float((v.double() - r).norm() / max(float(r.norm()), 1e-30))
    worst = max(moved.items(), key=lambda kv: kv[1]) if moved else ("", 0.0)
    # PyTorch's own bf16 error on the same weights: autocast (bf16 matmuls, fp32 parameters and reductions, the
    # mixed precision torch users train with) on the GPU, against the float64 gradients above. It says what a bf16
    # computation of this model can be held to; the test reports bamba's error beside it.
    autocast = {}
    if torch.cuda.is_available():
        m = load(mdir).cuda().train()
        m.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = m(input_ids=ids.cuda(), labels=labels.cuda(), use_cache=False)
        out.loss.backward()
        for n, p in m.named_parameters():
            r = g[n].double()
            autocast[n] = float((p.grad.detach().double().cpu() - r).norm() / max(float(r.norm()), 1e-30))
        del m
    worst_ac = max(autocast.items(), key=lambda kv: kv[1]) if autocast else ("", 0.0)
    json.dump({"model": name, "precision": prec, "loss": loss, "fp32_fixture_loss": float(ref["step0.loss"]),
               "weights": "round-to-nearest bf16 of every parameter with >= 2 dims; 1-D parameters fp32",
               "worst_gradient_moved_by_rounding": {"tensor": worst[0], "relative_l2": worst[1]},
               "torch_autocast_bf16_relative_l2": autocast,
               "tensors": len(g)}, open(os.path.join(OUT, name, "reference.json"), "w"), indent=1)
    print(f"{name}: {prec}, loss {loss:.6f} (fp32 weights {float(ref['step0.loss']):.6f}), {len(g)} gradients; "
          f"rounding moved {worst[0]} by {worst[1]:.3g}; PyTorch's bf16 autocast is off by up to {worst_ac[1]:.3g} "
          f"({worst_ac[0]})", flush=True)
