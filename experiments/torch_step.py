"""A PyTorch reference of the stage-1 step, for `benchmark.py` only (never imported by the library).

The same network, losses and optimiser as `mscm_jax.stage1.make_update` for the configs
the presets use: the CIFAR ResNet (3x3 stem, BasicBlocks, 1x1-conv shortcut), Hopfield
memories in branch mode (trained as a codebook on the detached feature, or contrastive
with a projection head per scale), the SimCLR head, NT-Xent, the prototype variance hinge,
and SGD with momentum or LARS, weight decay on tensors of rank > 1 only. Parameters are
initialised by PyTorch's defaults: a step's cost does not depend on the values.

`augment` mirrors `mscm_jax.data.augment.two_views` (random resized crop as a bilinear
resample, flip, colour jitter with its four ops in a random order per image, grayscale),
batched, so the two frameworks' augmentations can be timed as their own rows.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
STAGES = ("res1", "res2", "res3", "res4")


def conv_bn(cin: int, cout: int, k: int, stride: int) -> nn.Sequential:
  return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False),
                       nn.BatchNorm2d(cout, eps=1e-5, momentum=0.1))


class BasicBlock(nn.Module):
  def __init__(self, cin: int, cout: int, stride: int):
    super().__init__()
    self.a = conv_bn(cin, cout, 3, stride)
    self.b = conv_bn(cout, cout, 3, 1)
    self.proj = conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else None

  def forward(self, x):
    y = self.b(F.relu(self.a(x)))
    return F.relu(y + (x if self.proj is None else self.proj(x)))


class Memory(nn.Module):
  """q = LN(W_q f), K = LN(W_k P), a = softmax(beta q K^T), r = W_o (a P)."""

  def __init__(self, channels: int, n: int, d: int):
    super().__init__()
    self.prototypes = nn.Parameter(torch.randn(n, d))
    self.query, self.key, self.out = nn.Linear(channels, d), nn.Linear(d, d), nn.Linear(d, channels)
    self.query_norm, self.key_norm = nn.LayerNorm(d, eps=1e-6), nn.LayerNorm(d, eps=1e-6)
    self.beta = 1.0 / math.sqrt(d)

  def forward(self, f):  # f: [..., C] channels last
    keys = self.key_norm(self.key(self.prototypes)).float()
    q = self.query_norm(self.query(f)).float()
    a = torch.softmax(self.beta * q @ keys.T, dim=-1)
    return self.out((a @ self.prototypes).to(f.dtype)), a


class Head(nn.Module):
  def __init__(self, cin: int, dims: tuple[int, ...]):
    super().__init__()
    layers, c = [], cin
    for width in dims[:-1]:
      layers += [nn.Linear(c, width, bias=False), nn.BatchNorm1d(width, eps=1e-5), nn.ReLU()]
      c = width
    layers.append(nn.Linear(c, dims[-1]))
    self.net = nn.Sequential(*layers)

  def forward(self, x):
    return self.net(x).float()


class AnoMem(nn.Module):
  """Encoder + memories + heads; `forward` returns (projection, scale projections, (f, r) pairs)."""

  def __init__(self, config):
    super().__init__()
    m, mem = config.model, config.memory
    if mem.mode != "branch":
      raise ValueError(f"the PyTorch reference mirrors memory.mode='branch' only, not {mem.mode!r}")
    widths = tuple(m.widths)
    self.scales, self.codebook = tuple(mem.scales), mem.train == "codebook"
    self.stem = conv_bn(3, widths[0], 3, 1)
    cin, stages = widths[0], []
    for i, (n_blocks, width) in enumerate(zip(m.stage_sizes, widths)):
      blocks = []
      for j in range(n_blocks):
        blocks.append(BasicBlock(cin, width, (1 if i == 0 else 2) if j == 0 else 1))
        cin = width
      stages.append(nn.Sequential(*blocks))
    self.stages = nn.ModuleList(stages)
    channels = dict(zip(STAGES, widths), pooled=widths[-1])
    self.memories = nn.ModuleDict({s: Memory(channels[s], mem.num_prototypes, mem.proto_dim)
                                   for s in self.scales})
    self.head = Head(widths[-1], tuple(m.head_dims))
    self.scale_heads = nn.ModuleDict() if self.codebook else nn.ModuleDict(
        {s: Head(channels[s], tuple(m.head_dims)) for s in self.scales})
    self.register_buffer("mean", torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1))
    self.register_buffer("std", torch.tensor(CIFAR_STD).view(1, 3, 1, 1))

  def _read(self, scale, f, pairs, scale_proj):
    """f: [B, C, h, w] or [B, C]; the memory reads every position, channels last."""
    f_in = f.detach() if self.codebook else f
    f_last = f_in if f_in.ndim == 2 else f_in.permute(0, 2, 3, 1)
    r, _ = self.memories[scale](f_last)
    pairs.append((f_last, r))
    if not self.codebook:
      pooled = r if r.ndim == 2 else r.mean(dim=(1, 2))
      scale_proj.append(self.scale_heads[scale](pooled))

  def forward(self, x):
    pairs, scale_proj = [], []
    h = F.relu(self.stem((x - self.mean) / self.std))
    for name, stage in zip(STAGES, self.stages):
      h = stage(h)
      if name in self.scales:
        self._read(name, h, pairs, scale_proj)
    emb = h.mean(dim=(2, 3))
    if "pooled" in self.scales:
      self._read("pooled", emb, pairs, scale_proj)
    return self.head(emb), scale_proj, pairs


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
  b = z1.shape[0]
  z = F.normalize(torch.cat([z1, z2]).float(), dim=-1)
  logits = (z @ z.T) / temperature
  logits = logits.masked_fill(torch.eye(2 * b, dtype=torch.bool, device=z.device), -1e9)
  pos = torch.cat([torch.arange(b, 2 * b), torch.arange(b)]).to(z.device)
  return F.cross_entropy(logits, pos)


def variance_hinge(p: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
  return F.relu(1.0 - torch.sqrt(p.float().var(dim=0, unbiased=False) + eps)).mean()


def loss_fn(model: AnoMem, x: torch.Tensor, config) -> torch.Tensor:
  b = x.shape[0] // 2
  tau = config.loss.temperature
  proj, scale_proj, pairs = model(x)
  loss = nt_xent(proj[:b], proj[b:], tau)
  for z in scale_proj:
    loss = loss + config.loss.scale_weight * nt_xent(z[:b], z[b:], tau)
  for scale, (f, r) in zip(model.scales, pairs):
    loss = loss + config.loss.variance_weight * variance_hinge(model.memories[scale].prototypes)
    if model.codebook:
      loss = loss + config.loss.codebook_weight * (f.float() - r.float()).square().mean()
  return loss


class Lars(torch.optim.Optimizer):
  """optax.lars: decayed weights, trust ratio ||p|| / ||g|| (rank > 1 only), momentum."""

  def __init__(self, params, lr, momentum, weight_decay):
    super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

  @torch.no_grad()
  def step(self):
    for group in self.param_groups:
      for p in group["params"]:
        g = p.grad
        if p.ndim > 1:
          g = g.add(p, alpha=group["weight_decay"])
          pn, gn = torch.linalg.vector_norm(p), torch.linalg.vector_norm(g)
          g = g * torch.where((pn > 0) & (gn > 0), pn / gn, torch.ones_like(pn))
        buf = self.state[p].setdefault("momentum", torch.zeros_like(p))
        buf.mul_(group["momentum"]).add_(g)
        p.add_(buf, alpha=-group["lr"])


def optimizer(model: nn.Module, config) -> torch.optim.Optimizer:
  o = config.optim
  lr = o.learning_rate * config.train.batch_size / 256
  decay = [p for p in model.parameters() if p.ndim > 1]
  rest = [p for p in model.parameters() if p.ndim <= 1]
  if o.name == "lars":
    return Lars(model.parameters(), lr, o.momentum, o.weight_decay)
  if o.name == "sgd":
    return torch.optim.SGD([dict(params=decay, weight_decay=o.weight_decay),
                            dict(params=rest, weight_decay=0.0)], lr=lr, momentum=o.momentum)
  return torch.optim.AdamW([dict(params=decay, weight_decay=o.weight_decay),
                            dict(params=rest, weight_decay=0.0)], lr=lr)


def make_step(model: AnoMem, opt: torch.optim.Optimizer, config, dtype: torch.dtype):
  """The train step on a batch of views [2B, 3, H, W]; bfloat16 by CPU autocast."""

  def step(x):
    opt.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
      loss = loss_fn(model, x, config)
    loss.backward()
    opt.step()
    return loss

  return step


# ----------------------------------------------------------------------- augmentation

_GRAY = torch.tensor([0.299, 0.587, 0.114])


def _gray(x):  # [B, 3, H, W] -> [B, 1, H, W]
  return (x * _GRAY.view(1, 3, 1, 1)).sum(1, keepdim=True)


def _hue(x, shift):
  r, g, b = x[:, 0], x[:, 1], x[:, 2]
  v, _ = x.max(1)
  c = v - x.min(1)[0]
  s = torch.where(v > 0, c / torch.where(v > 0, v, torch.ones_like(v)), torch.zeros_like(v))
  safe = torch.where(c > 0, c, torch.ones_like(c))
  h = torch.where(v == r, (g - b) / safe,
                  torch.where(v == g, 2 + (b - r) / safe, 4 + (r - g) / safe))
  h = torch.where(c > 0, (h / 6) % 1, torch.zeros_like(h))
  h = (h + shift.view(-1, 1, 1)) % 1
  k = (torch.tensor([5.0, 3.0, 1.0]).view(1, 3, 1, 1) + h.unsqueeze(1) * 6) % 6
  return v.unsqueeze(1) - (v * s).unsqueeze(1) * torch.clamp(torch.minimum(k, 4 - k), 0, 1)


def augment(images: torch.Tensor, generator: torch.Generator, p) -> torch.Tensor:
  """One SimCLR view of each image: uint8 [B, 3, H, W] -> float [B, 3, H, W] in [0, 1]."""
  b = images.shape[0]
  x = images.float() / 255
  u = torch.rand(b, 16, generator=generator)
  area = p.crop_scale[0] + (p.crop_scale[1] - p.crop_scale[0]) * u[:, 0]
  lo, hi = math.log(p.crop_ratio[0]), math.log(p.crop_ratio[1])
  ratio = torch.exp(lo + (hi - lo) * u[:, 1])
  sw = torch.clamp(torch.sqrt(area * ratio), max=1.0)
  sh = torch.clamp(torch.sqrt(area / ratio), max=1.0)
  cx = (2 * u[:, 2] - 1) * (1 - sw)
  cy = (2 * u[:, 3] - 1) * (1 - sh)
  flip = torch.where(u[:, 4] < p.flip_prob, -1.0, 1.0)
  theta = torch.zeros(b, 2, 3)
  theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sw * flip, cx, sh, cy
  grid = F.affine_grid(theta, list(x.shape), align_corners=False)
  x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

  def factor(v, strength):
    lo_ = max(0.0, 1 - strength)
    return (lo_ + (1 + strength - lo_) * v).view(-1, 1, 1, 1)

  bright, contrast = factor(u[:, 5], p.brightness), factor(u[:, 6], p.contrast)
  sat, hue = factor(u[:, 7], p.saturation), p.hue * (2 * u[:, 8] - 1)
  ops = [lambda y: torch.clamp(y * bright, 0, 1),
         lambda y: torch.clamp(_gray(y).mean((2, 3), keepdim=True)
                               + contrast * (y - _gray(y).mean((2, 3), keepdim=True)), 0, 1),
         lambda y: torch.clamp(_gray(y) + sat * (y - _gray(y)), 0, 1),
         lambda y: torch.clamp(_hue(y, hue), 0, 1)]
  order = torch.argsort(u[:, 9:13], dim=1)  # a random order per image
  jittered = x
  for position in range(4):
    op_here = order[:, position].view(-1, 1, 1, 1)
    candidates = [op(jittered) for op in ops]  # every op, selected per image (as JAX's vmap)
    jittered = sum(torch.where(op_here == k, c, torch.zeros_like(c))
                   for k, c in enumerate(candidates))
  x = torch.where((u[:, 13] < p.jitter_prob).view(-1, 1, 1, 1), jittered, x)
  x = torch.where((u[:, 14] < p.grayscale_prob).view(-1, 1, 1, 1), _gray(x).expand_as(x), x)
  return torch.clamp(x, 0, 1)


def two_views(images: torch.Tensor, generator: torch.Generator, p) -> torch.Tensor:
  """[2B, 3, H, W]: the two views of each image, as `make_step` takes them."""
  return augment(torch.cat([images, images]), generator, p)
