"""PyTorch eager PP-TSM, the GPU anchor of our benchmark: one measurement per process.

    python torch_eager.py eval|train DEPTH NUM_SEG SIZE BATCH ITERS [--device cuda:0|cpu]
        [--dtype f32|bf16] [--tf32] [--cudnn-benchmark] [--channels-last] [--check-params]
    [--profile]

The network is PaddleVideo's PP-TSM (ppvideo 2.3.1's ResNetTweaksTSM backbone and ppTSMHead,
which tsm-model reproduces), written in plain PyTorch eager with nothing compiled or fused:
- stem: three 3x3 ConvBN + leaky ReLU (3->32 stride 2, 32->32, 32->64), max pool 3/2/1;
- depth 50/101/152: bottlenecks (1x1 leaky, 3x3 with the stage's stride leaky, 1x1 no act); a
  projection shortcut is a 1x1 ConvBN (no act) after a 2x2 average pool (stride 2, ceil mode,
  exclusive), except on the very first block, which has no pool;
- depth 18/34: basic blocks (3x3 with the stride leaky, 3x3 no act), projection shortcut a 1x1
  ConvBN with the stride and no pool;
- every residual branch starts with Paddle's temporal shift of the block's input (the shortcut
  takes it unshifted), and ends with add then leaky ReLU; leaky ReLU slope 0.01, BN eps 1e-5;
- head: global average pool, dropout 0.5 (training only; PP-TSM's configs set drop_ratio 0.5),
  mean over the clip's frames, fc to 400 classes.
Weights start as PaddleVideo's do (Kaiming normal convs, BN 1/0, fc Normal(0, 0.01) and 0).

MODE eval: eval mode under torch.inference_mode(), a forward on random clips [BATCH, NUM_SEG, 3,
SIZE, SIZE] (seed 0). MODE train: train mode, forward, cross entropy on labels
arange(BATCH) % 400, backward, SGD (momentum 0.9, Nesterov; PyTorch's form of the update) with
PP-TSM's parameter groups: weight decay 1e-4 on conv and fc weights, none on BN and the fc bias,
learning rate x5 on the fc weight and x10 on its bias (Paddle's ParamAttr), then
zero_grad(set_to_none=True). BN's running statistics follow PyTorch's rule (unbiased running
variance), which changes no time.

Fairness settings:
- --dtype f32 (default) is strict fp32: TF32 off for cuDNN convolutions and CUDA matmuls
  (PyTorch turns it on for convolutions by default); --tf32 turns both on.
- --dtype bf16 is PyTorch's usual mixed precision: torch.autocast(device type, torch.bfloat16)
  around the forward and the loss; weights, optimizer and BN statistics stay fp32.
- torch.backends.cudnn.benchmark stays at its default False (cuDNN's heuristics pick the
  algorithms) with one untimed warm-up iteration; --cudnn-benchmark sets it True and runs three
  warm-ups, so that the autotuning is done before the clock starts.
- --channels-last stores the weights (and so the activations) NHWC, as PyTorch's tuning guide
  advises for convolutions on tensor cores; the default is PyTorch's NCHW.
- Leaky ReLUs and residual adds work in place, as torchvision's ResNet does; the temporal shift
  writes a new tensor, as TSM's own code does.
- ITERS timed iterations with no host synchronisation inside them; on CUDA the device is
  synchronised before the clock starts and before it stops.
- CPU threads: PyTorch's default, set by the caller through OMP_NUM_THREADS.

Prints one JSON line: engine, mode, dtype, batch, clips (BATCH * ITERS), seconds, clips_per_s and
peak_mem_mb (torch.cuda.max_memory_allocated on CUDA, peak RSS on the CPU). --check-params prints
the trainable parameter count of the model instead (BN running statistics are buffers, not
counted) and exits. --profile (CPU) then runs ITERS more iterations under torch.profiler and adds
parts_ms, the time of one iteration by part in the parts of tsm-rs's model_bench step profile
(PROFILE_PARTS: each operator's own time goes to the part of its nearest enclosing operator
that names one, the rest to "rest"), and profiled_seconds, one profiled iteration's time.

Needs only the standard library and torch.
"""

import argparse
import json
import resource
import struct
import time
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

NUM_CLASSES = 400
LEAKY_SLOPE = 0.01
DROPOUT = 0.5
LEARNING_RATE = 0.01
STAGE_BLOCKS = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}
STAGE_WIDTHS = (64, 128, 256, 512)


def float32(v):
    """`v` rounded to the nearest float32."""
    return struct.unpack("f", struct.pack("f", v))[0]


def shift_folds(channels, ratio):
    """Paddle's channel split `(int(C*ratio), int(C*2*ratio))`, computed in float32 as its kernel
    computes it: the float64 product of two float32 values is exact, so one rounding of it is the
    float32 product."""
    r = float32(ratio)
    return int(float32(channels * r)), int(float32(channels * 2 * r))


def temporal_shift(x, num_seg, folds):
    """Paddle's `F.temporal_shift` on x [N*T, C, H, W], out of place: channels [0, c1) at frame t
    take frame t-1 (zeros at t = 0), channels [c1, c2) take frame t+1 (zeros at the last frame),
    the rest stay."""
    nt, c, h, w = x.shape
    c1, c2 = folds
    x5 = x.view(nt // num_seg, num_seg, c, h, w)
    out = torch.zeros_like(x5)
    out[:, 1:, :c1] = x5[:, :-1, :c1]
    out[:, :-1, c1:c2] = x5[:, 1:, c1:c2]
    out[:, :, c2:] = x5[:, :, c2:]
    return out.view(nt, c, h, w)


class ConvBN(nn.Module):
    """Paddle's ConvBNLayer: [2x2 average pool, ResNet-D] -> conv (no bias) -> BN -> [leaky]."""

    def __init__(self, cin, cout, kernel, stride=1, act=False, pool=False):
        super().__init__()
        self.pool = nn.AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False) if pool else None
        self.conv = nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-5, momentum=0.1)
        self.act = act

    def forward(self, x):
        if self.pool is not None:
            x = self.pool(x)
        y = self.bn(self.conv(x))
        return F.leaky_relu_(y, LEAKY_SLOPE) if self.act else y


class BottleneckBlock(nn.Module):
    """Temporal shift -> 1x1 -> 3x3 (stride) -> 1x1 (x4 wide), plus the unshifted shortcut."""

    def __init__(self, cin, width, stride, num_seg, projection, first):
        super().__init__()
        self.num_seg = num_seg
        self.folds = shift_folds(cin, 1.0 / num_seg)
        self.conv0 = ConvBN(cin, width, 1, act=True)
        self.conv1 = ConvBN(width, width, 3, stride, act=True)
        self.conv2 = ConvBN(width, width * 4, 1)
        self.short = ConvBN(cin, width * 4, 1, pool=not first) if projection else None

    def forward(self, x):
        y = self.conv2(self.conv1(self.conv0(temporal_shift(x, self.num_seg, self.folds))))
        y += x if self.short is None else self.short(x)
        return F.leaky_relu_(y, LEAKY_SLOPE)


class BasicBlock(nn.Module):
    """Temporal shift -> 3x3 (stride) -> 3x3, plus the unshifted shortcut."""

    def __init__(self, cin, width, stride, num_seg, projection):
        super().__init__()
        self.num_seg = num_seg
        self.folds = shift_folds(cin, 1.0 / num_seg)
        self.conv0 = ConvBN(cin, width, 3, stride, act=True)
        self.conv1 = ConvBN(width, width, 3)
        self.short = ConvBN(cin, width, 1, stride) if projection else None

    def forward(self, x):
        y = self.conv1(self.conv0(temporal_shift(x, self.num_seg, self.folds)))
        y += x if self.short is None else self.short(x)
        return F.leaky_relu_(y, LEAKY_SLOPE)


def residual_blocks(depth, num_seg):
    """The four stages' blocks under PaddleVideo's names (`bb_{stage}_{i}` for bottlenecks,
    `res{stage+2}{a,b,..}` for basic blocks). The first block of every stage has a projection
    shortcut, and those of stages 2-4 have stride 2."""
    blocks = OrderedDict()
    cin = 64
    for stage, (count, width) in enumerate(zip(STAGE_BLOCKS[depth], STAGE_WIDTHS)):
        for i in range(count):
            stride = 2 if i == 0 and stage > 0 else 1
            if depth >= 50:
                name, cout = f"bb_{stage}_{i}", width * 4
                block = BottleneckBlock(cin, width, stride, num_seg, i == 0, stage == i == 0)
            else:
                name, cout = f"res{stage + 2}{chr(97 + i)}", width
                block = BasicBlock(cin, width, stride, num_seg, i == 0)
            blocks[name] = block
            cin = cout
    return nn.Sequential(blocks)


class ResNetTweaksTSM(nn.Module):
    """PaddleVideo's ResNet-vd TSM backbone: deep stem, max pool, four stages of blocks."""

    def __init__(self, depth, num_seg):
        super().__init__()
        self.conv1_1 = ConvBN(3, 32, 3, 2, act=True)
        self.conv1_2 = ConvBN(32, 32, 3, act=True)
        self.conv1_3 = ConvBN(32, 64, 3, act=True)
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.blocks = residual_blocks(depth, num_seg)

    def forward(self, x):
        return self.blocks(self.pool(self.conv1_3(self.conv1_2(self.conv1_1(x)))))


class PPTSMHead(nn.Module):
    """ppTSMHead: per-frame global average pool, dropout, mean over the frames, fc."""

    def __init__(self, cin, num_classes, num_seg):
        super().__init__()
        self.num_seg = num_seg
        self.dropout = nn.Dropout(DROPOUT)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.dropout(F.adaptive_avg_pool2d(x, 1).flatten(1))
        return self.fc(x.view(-1, self.num_seg, x.shape[1]).mean(dim=1))


class PPTSM(nn.Module):
    """Recognizer2D: clips [N, T, 3, H, W] as frames [N*T, 3, H, W] through backbone and head."""

    def __init__(self, depth, num_seg, num_classes=NUM_CLASSES):
        super().__init__()
        self.backbone = ResNetTweaksTSM(depth, num_seg)
        self.head = PPTSMHead(2048 if depth >= 50 else 512, num_classes, num_seg)

    def forward(self, clips):
        return self.head(self.backbone(clips.reshape(-1, *clips.shape[2:])))


def init_weights(model):
    """PaddleVideo's initialisation: Kaiming normal (fan in) convs, BN weight 1 and bias 0, fc
    weight Normal(0, 0.01) and bias 0."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


def param_groups(model):
    """PP-TSM's optimizer groups: L2 decay 1e-4 except on BN, fc lr x5 (weight) and x10 (bias)."""
    fc = model.head.fc
    convs = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)]
    norms = [p for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()]
    groups = [
        {"params": convs, "weight_decay": 1e-4},
        {"params": norms, "weight_decay": 0.0},
        {"params": [fc.weight], "weight_decay": 1e-4, "lr": 5 * LEARNING_RATE},
        {"params": [fc.bias], "weight_decay": 0.0, "lr": 10 * LEARNING_RATE},
    ]
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    return groups


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=["eval", "train"])
    p.add_argument("depth", type=int, choices=sorted(STAGE_BLOCKS))
    p.add_argument("num_seg", type=int)
    p.add_argument("size", type=int)
    p.add_argument("batch", type=int)
    p.add_argument("iters", type=int)
    p.add_argument("--device", default="cuda:0")
    p.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    p.add_argument("--tf32", action="store_true", help="allow TF32 in f32 convs and matmuls")
    p.add_argument("--cudnn-benchmark", action="store_true", help="cuDNN autotuning, 3 warm-ups")
    p.add_argument("--channels-last", action="store_true", help="NHWC weights and activations")
    p.add_argument("--check-params", action="store_true", help="print the parameter count")
    p.add_argument("--profile", action="store_true", help="add the time by part (CPU)")
    return p.parse_args()


def set_backends(args):
    torch.backends.cudnn.allow_tf32 = args.tf32
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.benchmark = args.cudnn_benchmark


def make_step(model, clips, args, device):
    """One iteration of MODE, as a function of nothing."""
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16")
    if args.mode == "eval":
        model.eval()

        def step():
            with torch.inference_mode(), autocast:
                model(clips)

        return step
    model.train()
    labels = torch.arange(args.batch, device=device) % NUM_CLASSES
    opt = torch.optim.SGD(param_groups(model), lr=LEARNING_RATE, momentum=0.9, nesterov=True)

    def step():
        with autocast:
            loss = F.cross_entropy(model(clips), labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_seconds(step, warmups, iters, device):
    for _ in range(warmups):
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        step()
    synchronize(device)
    return time.perf_counter() - start


def peak_mem_mb(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# The parts of tsm-rs's step profile (model_bench --profile), and the operators (profiler event
# names; a "*" ends a prefix) whose time goes to each. An operator's own time goes to the part of
# its nearest enclosing operator that names one: SGD's adds are the optimizer's, a conv's copies
# the conv's. The temporal shift is marked by a record_function around it while profiling.
SHIFT_MARK = "temporal shift"
PROFILE_PARTS = [
    ("conv forward", ["aten::conv2d", "aten::convolution", "aten::mkldnn_convolution"]),
    ("conv backward", ["aten::convolution_backward"]),
    ("BN forward", ["aten::native_batch_norm", "aten::_batch_norm_impl_index"]),
    ("BN backward", ["aten::native_batch_norm_backward"]),
    (SHIFT_MARK, [SHIFT_MARK, "autograd::engine::evaluate_function: CopySlices",
                  "autograd::engine::evaluate_function: SliceBackward0"]),
    ("max and avg pools", ["aten::max_pool2d*", "aten::avg_pool2d*", "aten::adaptive_avg_pool*",
                           "aten::_adaptive_avg_pool*"]),
    ("activation, residual add", ["aten::leaky_relu*"]),
    ("optimizer (SGD update)", ["Optimizer.*"]),
]
REST = "rest"


def part_of(name):
    for part, names in PROFILE_PARTS:
        for n in names:
            if name == n or (n.endswith("*") and name.startswith(n[:-1])):
                return part
    return None


def profile_parts(step, iters):
    """(milliseconds of one iteration by part, seconds of one profiled iteration)."""
    from torch.profiler import ProfilerActivity, profile, record_function

    global temporal_shift
    unmarked = temporal_shift

    def marked(*a):
        with record_function(SHIFT_MARK):
            return unmarked(*a)

    temporal_shift = marked
    try:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            for _ in range(iters):
                step()
            seconds = (time.perf_counter() - start) / iters
    finally:
        temporal_shift = unmarked
    parts = OrderedDict((p, 0.0) for p, _ in PROFILE_PARTS)
    parts[REST] = 0.0
    for e in prof.events():
        part, up = None, e
        while up is not None and part is None:
            part = part_of(up.name)
            # the forward's residual add: an add at the top level (backward's adds run inside
            # autograd's evaluate_function events, SGD's inside its step)
            if part is None and up.name == "aten::add_" and up.cpu_parent is None:
                part = "activation, residual add"
            up = up.cpu_parent
        parts[part or REST] += e.self_cpu_time_total / 1e3 / iters
    return parts, seconds


def main():
    args = parse_args()
    torch.manual_seed(0)
    model = PPTSM(args.depth, args.num_seg)
    init_weights(model)
    if args.check_params:
        count = sum(p.numel() for p in model.parameters() if p.requires_grad)
        print(json.dumps({"engine": "pytorch-eager", "depth": args.depth, "params": count}))
        return
    device = torch.device(args.device)
    if args.profile and device.type != "cpu":
        raise SystemExit("--profile: CPU only")
    set_backends(args)
    model.to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    clips = torch.randn(args.batch, args.num_seg, 3, args.size, args.size, device=device)
    step = make_step(model, clips, args, device)
    seconds = timed_seconds(step, 3 if args.cudnn_benchmark else 1, args.iters, device)
    clips_done = args.batch * args.iters
    result = {
        "engine": "pytorch-eager",
        "mode": args.mode,
        "dtype": args.dtype,
        "batch": args.batch,
        "clips": clips_done,
        "seconds": seconds,
        "clips_per_s": clips_done / seconds,
        "peak_mem_mb": peak_mem_mb(device),
    }
    if args.profile:
        result["parts_ms"], result["profiled_seconds"] = profile_parts(step, args.iters)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
