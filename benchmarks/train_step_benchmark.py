r"""Train-step throughput: supcon_tf SupConModel vs the same ResNet-18 SupCon step in PyTorch, with a time split.

    .venv/bin/python benchmarks/train_step_benchmark.py --out benchmarks/results/train_step.md

Rows (each in a fresh process, views/s = batch x views / median step time; samples/s = batch / step time):
  tf small_cnn digits   SupConModel(small_cnn on 16x16x1), batch 256, 2 views
  tf resnet18 32x32     SupConModel(CIFAR ResNet-18 + 512->128 head), batch 256, 2 views
  torch resnet18 32x32  the same architecture and step written in PyTorch (below)
  tf resnet18 onednn=0  the TF ResNet-18 step with TF_ENABLE_ONEDNN_OPTS=0 (the CPU default we change)
The TF split times separate tf.functions: forward (encoder + head on all
views), loss (SupCon loss and its gradient w.r.t. the embeddings), backward
(= full gradient step without the update - forward - loss), optimizer
(SGD momentum apply of precomputed gradients).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from _results import run_header, write_results  # benchmarks/_results.py (this folder is on sys.path when run as a script)

BATCH = 256
VIEWS = 2


def _median_time(fn, repeats):
    fn()  # warm-up / tracing
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def tf_row(encoder_name, repeats, batch):
    import keras
    import numpy as np
    import tensorflow as tf

    from supcon_tf import encoders, layers, losses, models

    shape = (16, 16, 1) if encoder_name == "small_cnn" else (32, 32, 3)
    keras.utils.set_random_seed(0)
    model = models.SupConModel(
        encoders.build_encoder(encoder_name, shape), layers.ProjectionHead((512,), 128), loss_config=losses.LossConfig(temperature=0.1)
    )
    optimizer = keras.optimizers.SGD(0.05, momentum=0.9)
    optimizer.build(model.trainable_variables)
    rng = np.random.default_rng(0)
    views = tf.constant(rng.random((batch, VIEWS) + shape).astype(np.float32))
    labels = tf.constant(rng.integers(0, 10, size=batch))
    flat = tf.reshape(views, (-1,) + shape)

    @tf.function
    def forward():
        return model(flat, training=True)["embedding"]

    embeddings = tf.reshape(forward(), [batch, VIEWS, -1])

    @tf.function
    def loss_only(z):
        with tf.GradientTape() as tape:
            tape.watch(z)
            loss = losses.supcon_loss(z, labels, temperature=0.1)
        return tape.gradient(loss, z)

    @tf.function
    def gradients():
        with tf.GradientTape() as tape:
            z = model.embed_views(views, training=True)
            loss = losses.supcon_loss(z, labels, temperature=0.1)
        return tape.gradient(loss, model.trainable_variables)

    grads = gradients()

    @tf.function
    def apply():
        optimizer.apply(grads, model.trainable_variables)

    @tf.function
    def full_step():
        with tf.GradientTape() as tape:
            z = model.embed_views(views, training=True)
            loss = losses.supcon_loss(z, labels, temperature=0.1)
        optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
        return loss

    t_forward = _median_time(lambda: forward().numpy(), repeats)
    t_loss = _median_time(lambda: loss_only(embeddings).numpy(), repeats)
    t_grads = _median_time(lambda: [g.numpy() for g in gradients()][:1], repeats)
    t_apply = _median_time(lambda: apply(), repeats)
    t_step = _median_time(lambda: full_step().numpy(), repeats)
    return {
        "step_s": t_step,
        "views_per_s": batch * VIEWS / t_step,
        "forward_s": t_forward,
        "loss_s": t_loss,
        "backward_s": max(0.0, t_grads - t_forward - t_loss),
        "optimizer_s": t_apply,
    }


def torch_row(repeats, batch):
    import torch
    from torch import nn

    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(0)

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.short = nn.Sequential()
            if stride != 1 or cin != cout:
                self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            out = torch.relu(self.bn1(self.conv1(x)))
            return torch.relu(self.bn2(self.conv2(out)) + self.short(x))

    class Net(nn.Module):  # CIFAR ResNet-18 (3x3 stem, no max-pool) + 512 -> 512 -> 128 head
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
            layers, cin = [], 64
            for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
                layers += [Block(cin, cout, stride), Block(cout, cout, 1)]
                cin = cout
            self.layers = nn.Sequential(*layers)
            self.head = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 128))

        def forward(self, x):
            r = self.layers(self.stem(x)).mean(dim=(2, 3))
            return nn.functional.normalize(self.head(r), dim=1)

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from loss_benchmark import torch_supcon_dense

    net = Net()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    views = torch.rand(batch, VIEWS, 3, 32, 32)
    labels = torch.randint(0, 10, (batch,))

    def step():
        optimizer.zero_grad()
        z = net(views.reshape(-1, 3, 32, 32)).reshape(batch, VIEWS, -1)
        loss = torch_supcon_dense(z, labels, 0.1)
        loss.backward()
        optimizer.step()
        return float(loss)

    t_step = _median_time(step, repeats)
    return {"step_s": t_step, "views_per_s": batch * VIEWS / t_step}


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--rows", default="tf_small_cnn,tf_resnet18,torch_resnet18,tf_resnet18_onednn0")
    parser.add_argument("--out", default=None)
    parser.add_argument("--single", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.single:
        if args.single == "torch_resnet18":
            row = torch_row(args.repeats, args.batch)
        else:
            row = tf_row("small_cnn" if args.single == "tf_small_cnn" else "resnet18", args.repeats, args.batch)
        print(json.dumps(row))
        return 0
    rows = []
    for name in args.rows.split(","):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", TF_ENABLE_ONEDNN_OPTS="0" if name.endswith("onednn0") else "1")
        single = name.replace("_onednn0", "")
        command = [sys.executable, __file__, "--single", single, "--repeats", str(args.repeats), "--batch", str(args.batch)]
        result = subprocess.run(command, capture_output=True, text=True, env=env)
        lines = [ln for ln in result.stdout.splitlines() if ln.startswith("{")]
        row = json.loads(lines[-1]) if result.returncode == 0 and lines else {"error": result.stderr[-300:]}
        row["row"] = name
        rows.append(row)
        print(json.dumps(row), flush=True)
    header = "| row | step (s) | views/s | forward (s) | loss fwd+bwd (s) | backward (s) | optimizer (s) |"
    lines = [header, "|---|---|---|---|---|---|---|"]
    fmt = lambda r, k: f"{r[k]:.3f}" if k in r else "-"  # noqa: E731
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['row']} | error: {r['error'][:80]} | | | | | |")
            continue
        lines.append(
            f"| {r['row']} | {r['step_s']:.2f} | {r['views_per_s']:.1f} | {fmt(r, 'forward_s')} | "
            f"{fmt(r, 'loss_s')} | {fmt(r, 'backward_s')} | {fmt(r, 'optimizer_s')} |"
        )
    text = run_header("train_step_benchmark.py", argv, f"batch {args.batch} x {VIEWS} views") + "\n".join(lines) + "\n"
    print(text)
    write_results(text, None, args.out)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main(sys.argv[1:]))
