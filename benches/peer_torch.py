#!/usr/bin/env python3
"""The PyTorch peer of `armory bench`: the same models, run the same way, so that both sides are measured
in one run on one machine. `armory bench` runs this script itself (with the interpreter given by --python,
$ARMORY_PYTHON, ./.venv-peer/bin/python or python3) and prints the table; it can also be run by hand.

Set-up (once, a few minutes):  python3 -m venv .venv-peer && .venv-peer/bin/pip install torch numpy

usage: peer_torch.py seed   --digits FILE [--threads T] [--reps N | --serve]
           the seed ARM (1→256→256→256→17, kernel 7): train step at batch 64 (Adamax), forward at batch 64
           and 1, naive sampling of 16 images (64 full passes); with --serve, the blocks that standard input
           asks for, one line each: "ROW REPS" (how `armory bench` interleaves the two sides)
       peer_torch.py epochs --digits FILE --model seed|gated [--layers L] [--batch B] [--epochs N]
                            [--mixture M] [--vertical-residual] [--ema D] [--threads T]
           seconds per training epoch (train + validation pass) on the digits split, like `armory train`

Every figure is one JSON line: {"row": NAME, "ms": [one value per repetition]}, then {"info": {...}}.
The models mirror armory's exactly in layers and parameter counts (checked: the seed net has 950,545
parameters, the gated PixelCNN 533,393 with 5 layers and 64 channels)."""
import argparse, gzip, json, sys, time
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

K, D = 17, 64


def load_digits(path):
    """The digits split armory uses: by position, train 1,000, validation 350, test 447."""
    a = np.loadtxt(gzip.open(path, "rt"), delimiter=",", dtype=np.int64)
    x = a[:, :64]
    return x[:1000], x[1000:1350], x[1350:]


def emit(row, values):
    print(json.dumps({"row": row, "ms": [round(v, 4) for v in values]}), flush=True)


# ---- the seed ARM -----------------------------------------------------------------------------------------

class CausalConv1d(nn.Module):
    def __init__(self, cin, cout, k, dilation, A=False):
        super().__init__()
        self.A, self.pad = A, (k - 1) * dilation + (1 if A else 0)
        self.conv1d = nn.Conv1d(cin, cout, k, dilation=dilation)

    def forward(self, x):
        out = self.conv1d(F.pad(x, (self.pad, 0)))
        return out[:, :, :-1] if self.A else out


class SeedArm(nn.Module):
    """Four causal convolutions, type A first, LeakyReLU between; raw values in, 17 logits out."""
    def __init__(self, m=256, k=7):
        super().__init__()
        chans = [1, m, m, m, K]
        layers = []
        for i in range(4):
            layers.append(CausalConv1d(chans[i], chans[i + 1], k, 1, A=(i == 0)))
            if i < 3:
                layers.append(nn.LeakyReLU())
        self.net = nn.Sequential(*layers)

    def logits(self, x):  # [B, D] -> [B, D, K]
        return self.net(x.float().unsqueeze(1)).permute(0, 2, 1)

    def nll(self, x):  # [B]
        return F.cross_entropy(self.logits(x).reshape(-1, K), x.reshape(-1), reduction="none").view(x.shape).sum(1)

    @torch.no_grad()
    def sample(self, n, gen):
        x = torch.zeros(n, D, dtype=torch.long)
        for d in range(D):
            p = torch.softmax(self.logits(x)[:, d, :], -1)
            x[:, d] = torch.multinomial(p, 1, generator=gen)[:, 0]
        return x


def timed(fn, reps, warmup=2):
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1e3)
    return out


def bench_seed(a):
    """The seed net's rows. With --serve, one block per line read from standard input ("ROW REPS": REPS timed
    calls after one warm-up call, two the first time a row runs), answered with its JSON line — how
    `armory bench` interleaves short blocks of both sides; otherwise every row once, --reps times (batch 1:
    ten times as many, sampling a quarter)."""
    torch.manual_seed(0)
    tr, _, _ = load_digits(a.digits)
    model = SeedArm()
    opt = torch.optim.Adamax(model.parameters(), lr=1e-3)
    x64, x1 = torch.from_numpy(tr[:64]), torch.from_numpy(tr[:1])
    gen = torch.Generator().manual_seed(0)

    def step():
        loss = model.nll(x64).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    rows = {"train_b64": (True, step),
            "forward_b64": (False, lambda: model.logits(x64)),
            "forward_b1": (False, lambda: model.logits(x1)),
            "naive_16": (False, lambda: model.sample(16, gen))}
    seen = set()

    def block(row, reps):
        training, f = rows[row]
        model.train(training)
        with torch.set_grad_enabled(training):
            emit(row, timed(f, reps, warmup=1 if row in seen else 2))
        seen.add(row)
    if a.serve:
        for line in sys.stdin:
            if line.strip():
                row, reps = line.split()
                block(row, int(reps))
    else:
        for row in rows:
            block(row, {"forward_b1": a.reps * 10, "naive_16": max(1, a.reps // 4)}.get(row, a.reps))


# ---- the gated PixelCNN (a mirror of armory's gated_pixelcnn) ---------------------------------------------

def gate(t):
    a, b = t.chunk(2, 1)
    return torch.tanh(a) * torch.sigmoid(b)


class GatedLayer(nn.Module):
    """Vertical (k/2+1)×k and horizontal 1×(k/2+1) stacks; v→h 1×1 on the down-shifted vertical
    pre-activation; tanh·σ gates; h_out 1×1 and a residual (not on the first layer)."""
    def __init__(s, cin, c, k, first, p, vertical_residual):
        super().__init__()
        s.k, s.first, s.p, s.vres = k, first, p, vertical_residual and not first
        s.v = nn.Conv2d(cin, 2 * c, (k // 2 + 1, k))
        s.h = nn.Conv2d(cin, 2 * c, (1, k // 2 + 1))
        s.v2h = nn.Conv2d(2 * c, 2 * c, 1)
        s.hout = nn.Conv2d(c, c, 1)

    def forward(s, v, h):
        k = s.k
        vp = s.v(F.pad(v, (k // 2, k // 2, k // 2, 0)))                  # rows above and the current row
        hin = F.pad(h, (k // 2 + 1, 0, 0, 0))[:, :, :, :-1] if s.first else F.pad(h, (k // 2, 0, 0, 0))
        down = F.pad(vp, (0, 0, 1, 0))[:, :, :-1, :]                       # one-row down-shift: rows above only
        hp = s.h(hin) + s.v2h(down)
        ho = s.hout(F.dropout(gate(hp), s.p, s.training))
        vo = gate(vp)
        if s.vres:
            vo = v + F.dropout(vo, s.p, s.training)
        return vo, (ho if s.first else ho + h)


class GatedPixelCnn(nn.Module):
    def __init__(s, c=64, layers=5, p=0.5, n_mix=0, vertical_residual=False):
        super().__init__()
        s.n_mix = n_mix
        s.layers = nn.ModuleList([GatedLayer(K, c, 7, True, p, vertical_residual)] +
                                 [GatedLayer(c, c, 3, False, p, vertical_residual) for _ in range(layers)])
        s.h1 = nn.Conv2d(c, 128, 1)
        s.h2 = nn.Conv2d(128, 3 * n_mix if n_mix else K, 1)

    def forward(s, x):  # [B, 8, 8] values -> [B, P, 8, 8]
        e = F.one_hot(x, K).permute(0, 3, 1, 2).float()
        v, h = e, e
        for layer in s.layers:
            v, h = layer(v, h)
        return s.h2(F.relu(s.h1(h)))

    def nll(s, x):  # [B]
        out = s(x)
        if not s.n_mix:
            return F.cross_entropy(out, x, reduction="none").sum((1, 2))
        return mixture_nll(out, x, s.n_mix)


def mixture_nll(params, x, m):
    """PixelCNN++'s discretized logistic mixture over K levels scaled to [−1, 1], edge bins to ±∞."""
    logit_pi, mu, log_s = params[:, :m], params[:, m:2 * m], params[:, 2 * m:].clamp(min=-7.0)
    xs = (2.0 * x.float() / (K - 1) - 1.0).unsqueeze(1)                  # [B, 1, H, W]
    inv_s = torch.exp(-log_s)
    half = 1.0 / (K - 1)
    cdf_plus = torch.sigmoid(inv_s * (xs - mu + half))
    cdf_min = torch.sigmoid(inv_s * (xs - mu - half))
    log_cdf_plus = (inv_s * (xs - mu + half)) - F.softplus(inv_s * (xs - mu + half))
    log_one_minus_cdf_min = -F.softplus(inv_s * (xs - mu - half))
    mid = inv_s * (xs - mu)
    log_pdf_mid = mid - log_s - 2.0 * F.softplus(mid) + np.log(2 * half)
    inner = torch.where(cdf_plus - cdf_min > 1e-5, torch.log((cdf_plus - cdf_min).clamp(min=1e-12)), log_pdf_mid)
    lp = torch.where(xs < -0.999, log_cdf_plus, torch.where(xs > 0.999, log_one_minus_cdf_min, inner))
    lp = lp + F.log_softmax(logit_pi, 1)
    return -torch.logsumexp(lp, 1).sum((1, 2))


# ---- training epochs, as `armory train` runs them ----------------------------------------------------------

def bench_epochs(a):
    torch.manual_seed(0)
    np.random.seed(0)
    tr, va, _ = load_digits(a.digits)
    if a.model == "seed":
        model = SeedArm()
        tr_t, va_t = torch.from_numpy(tr), torch.from_numpy(va)
    else:
        model = GatedPixelCnn(64, a.layers, 0.5, a.mixture, a.vertical_residual)
        tr_t, va_t = torch.from_numpy(tr.reshape(-1, 8, 8)), torch.from_numpy(va.reshape(-1, 8, 8))
    opt = torch.optim.Adamax(model.parameters(), lr=1e-3)
    avg = [p.detach().clone() for p in model.parameters()] if a.ema else None
    times = []
    for _ in range(a.epochs):
        t0 = time.perf_counter()
        model.train()
        for idx in torch.randperm(len(tr_t)).split(a.batch):
            loss = model.nll(tr_t[idx]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            if avg is not None:
                with torch.no_grad():
                    for q, p in zip(avg, model.parameters()):
                        q.mul_(a.ema).add_(p, alpha=1 - a.ema)
        model.eval()
        with torch.no_grad():
            float(torch.cat([model.nll(xb) for xb in va_t.split(64)]).mean())
        times.append((time.perf_counter() - t0) * 1e3)
    emit("epoch", times)
    params = sum(p.numel() for p in model.parameters())
    print(json.dumps({"info": {"params": params}}), flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("cmd", choices=["seed", "epochs"])
    p.add_argument("--digits", required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--serve", action="store_true", help="seed: blocks of rows as standard input asks")
    p.add_argument("--model", default="seed", choices=["seed", "gated"])
    p.add_argument("--layers", type=int, default=5)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--mixture", type=int, default=0)
    p.add_argument("--vertical-residual", action="store_true")
    p.add_argument("--ema", type=float, default=0.0)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.set_num_interop_threads(1)
    print(json.dumps({"info": {"torch": torch.__version__, "threads": torch.get_num_threads(),
                               "isa": torch.backends.cpu.get_cpu_capability()}}), flush=True)
    {"seed": bench_seed, "epochs": bench_epochs}[a.cmd](a)


if __name__ == "__main__":
    main()
