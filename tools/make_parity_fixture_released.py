"""Make a released-width parity fixture by running the ORIGINAL GeoLRM code (the referee) with random weights.

    python tools/make_parity_fixture_released.py --out DIR [--official ../shared/baselines/geolrm_official]
        [--device cpu|cuda] [--autocast] [--seed 0] [--layers 2] [--dino-layers 2] [--views 2] [--size 224]
        [--anchors 512] [--trace-dtypes]

Builds the original `TransformerSerializer` (proposal) and `GeoLRM` (reconstruction) at the released widths:
DINOv2-B encoders (768, 12 heads, trained grid 37², `--dino-layers` layers), proposal 384 wide / 16 heads on the
128³ grid with 8³-voxel tokens (16³ tokens), reconstruction 768 wide / 16 heads, 32 Gaussians per token, image
features 384, 8 deformable points, `--layers` layers each. Every parameter and BatchNorm statistic is perturbed
away from its initial value (own seeds); the views come from the original's `spherical_camera_pose` and
`FOV_to_intrinsics`, the anchors are a random subset of its 128³ voxel grid (raster order).

DIR is written in the format of ../shared/fixtures/geolrm_small (see its README): config.json,
state_dict.safetensors, inputs.npz and outputs.npz, the original in float32 (its float32 self-attention
attends over heads; `tools/check_parity.py --fixture DIR` compares against it). With --autocast it also holds
the original under torch's bf16 autocast (`torch.autocast(device)`: CUDA's op lists on cuda, CPU's on cpu),
with the Gaussian decoder outside it as in `GeoLRM.forward`, for the same weights and inputs:
  outputs_autocast.npz        its bf16 path as shipped (flash-attn, i.e. attention over anchors)
  outputs_autocast_heads.npz  its float32 attention branch (over heads) taken under autocast
  outputs_fp32_tokens.npz     its flash-attn branch taken in float32 (the float32 reference of the bf16 path)
The branch is forced by letting `geo_transformer`'s dtype test see other dtypes; no code of the original is
changed. flash-attn is replaced by torch SDPA (same kernel family), torchvision's Normalize by (x − m)/s when
torchvision does not import. On cuda the original's own CUDA kernels are built (official_ext, 1–2 min) and
TF32 is off. The directory is written beside DIR and renamed into place; an existing DIR is an error (exit 2).
This tool imports torch and transformers, never jax.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import sys
import tempfile
import types

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OFFICIAL = os.path.join(os.path.dirname(REPO), "shared", "baselines", "geolrm_official")
VARIANTS = {  # file -> (autocast, attention branch forced in geo_transformer)
    "outputs.npz": (False, None),
    "outputs_autocast.npz": (True, None),
    "outputs_autocast_heads.npz": (True, "heads"),
    "outputs_fp32_tokens.npz": (False, "tokens"),
}


def released_config(layers: int, dino_layers: int) -> dict:
    """Constructor arguments of the two original networks at the released widths (`layers` each)."""
    serializer = dict(use_bf16=False, encoder_feat_dim=384, transformer_dim=384, transformer_layers=layers,
                      transformer_heads=16, grid_size=128, token_res=8, num_deform_points=8, scale=0.5,
                      max_seq_len=8192)
    generator = dict(use_bf16=False, encoder_feat_dim=384, transformer_dim=768, transformer_layers=layers,
                     transformer_heads=16, grid_size=128, num_deform_points=8, gs_per_token=32, use_sh=False,
                     dropout=0.0, offset_max=0.2, scale_max=0.02)
    dino = dict(hidden_size=768, num_hidden_layers=dino_layers, num_attention_heads=12, patch_size=14,
                image_size=518, mlp_ratio=4, layerscale_value=1.0, layer_norm_eps=1e-6, hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0, drop_path_rate=0.0)
    return dict(serializer=serializer, lrm_generator=generator, dinov2=dino)


def _flash_attn_standin():
    """flash_attn's two entry points on torch SDPA ((B, S, H, D) layout, softmax scale 1/√D by default)."""
    import torch.nn.functional as F

    def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, **_):
        t = lambda x: x.transpose(1, 2)
        return t(F.scaled_dot_product_attention(t(q), t(k), t(v), dropout_p=dropout_p, is_causal=causal,
                                                scale=softmax_scale))

    def flash_attn_qkvpacked_func(qkv, dropout_p=0.0, softmax_scale=None, causal=False, **_):
        q, k, v = qkv.unbind(2)
        return flash_attn_func(q, k, v, dropout_p, softmax_scale, causal)

    module = types.ModuleType("flash_attn")
    module.flash_attn_func, module.flash_attn_qkvpacked_func = flash_attn_func, flash_attn_qkvpacked_func
    return module


def _torchvision_standin():
    import torch

    class Normalize(torch.nn.Module):
        def __init__(self, mean, std):
            super().__init__()
            self.mean, self.std = mean, std

        def forward(self, x):
            m = torch.as_tensor(self.mean, dtype=x.dtype, device=x.device)[:, None, None]
            s = torch.as_tensor(self.std, dtype=x.dtype, device=x.device)[:, None, None]
            return (x - m) / s

    tv, transforms = types.ModuleType("torchvision"), types.ModuleType("torchvision.transforms")
    transforms.Normalize, tv.transforms = Normalize, transforms
    return {"torchvision": tv, "torchvision.transforms": transforms}


def import_original(official: str, device: str) -> types.SimpleNamespace:
    """The original's modules, imported from `official` with its shims (and our SDPA flash-attn stand-in)."""
    from transformers import Dinov2Backbone  # noqa: F401  (first: transformers probes for flash_attn)

    sys.path[:0] = [os.path.join(official, "shims"), official]
    sys.modules["flash_attn"] = _flash_attn_standin()
    try:
        import torchvision.transforms  # noqa: F401
    except Exception:  # not installed, or a build that does not match this torch
        sys.modules.update(_torchvision_standin())
    if device == "cuda":
        import official_ext

        official_ext.build()
    from src.models.decoder import geo_transformer
    from src.models.encoder import dino2_wrapper
    from src.models.geolrm import GeoLRM
    from src.serializers.geo_srl import TransformerSerializer
    from src.utils import camera_util

    return types.SimpleNamespace(GeoLRM=GeoLRM, TransformerSerializer=TransformerSerializer,
                                 geo_transformer=geo_transformer, dino2_wrapper=dino2_wrapper,
                                 camera_util=camera_util)


def perturb_(module, gen) -> None:
    """Move every parameter and BatchNorm statistic away from its initial value (in place, seeded)."""
    import torch

    with torch.no_grad():
        for name, p in list(module.named_parameters()) + list(module.named_buffers()):
            if not p.is_floating_point():
                continue
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith("running_var"):
                p.mul_(torch.exp(0.3 * noise))
            elif p.numel() > 1 and float(p.std()) > 0:
                p.add_(0.2 * float(p.std()) * noise)
            elif p.ndim >= 2:  # zero-initialized matrices (deformable offsets and weights)
                p.add_(noise / math.sqrt(p[0].numel()))
            else:  # constant vectors: norm and LayerScale weights, biases, BN means
                p.add_(0.1 * noise)


def build(orig, cfg: dict, seed: int):
    """(serializer, generator) of the original with perturbed weights, float32, eval mode, on the CPU."""
    import torch
    import transformers

    dino_cfg = transformers.Dinov2Config(**cfg["dinov2"])
    transformers.Dinov2Backbone.from_pretrained = staticmethod(lambda *a, **k: transformers.Dinov2Backbone(dino_cfg))
    torch.manual_seed(seed)
    ser = orig.TransformerSerializer(**cfg["serializer"]).eval()
    gen = orig.GeoLRM(**cfg["lrm_generator"]).eval()
    g = torch.Generator().manual_seed(seed + 1)
    perturb_(ser, g)
    perturb_(gen, g)
    return ser, gen, dino_cfg


def make_inputs(orig, ser, views: int, size: int, anchors: int, seed: int) -> dict:
    """images (1, V, 3, H, W) in [0, 1]; c2ws, Ks from the original's camera helpers; xyzs (1, S, 3)."""
    import numpy as np
    import torch

    g = torch.Generator().manual_seed(seed + 2)
    azimuths = np.linspace(0.0, 360.0, views, endpoint=False) + 30.0
    elevations = np.where(np.arange(views) % 2 == 0, 20.0, -10.0)
    c2ws = orig.camera_util.spherical_camera_pose(azimuths, elevations, 1.5).float()[None]
    ks = orig.camera_util.FOV_to_intrinsics(39.6).float()[None, None].repeat(1, views, 1, 1)
    images = torch.rand(1, views, 3, size, size, generator=g)
    grid = ser.xyzs_full.reshape(-1, 3)
    inner = torch.nonzero(grid.abs().amax(-1) <= 0.3)[:, 0]  # voxels well inside the views
    pick = torch.sort(inner[torch.randperm(len(inner), generator=g)[:anchors]]).values  # raster order
    return dict(images=images, c2ws=c2ws, Ks=ks, xyzs=grid[pick][None].contiguous(),
                azimuths=azimuths.tolist(), elevations=elevations.tolist())


class _DtypeView(types.ModuleType):
    """`torch` as seen by one module, with some dtype attributes replaced (to steer a dtype test)."""

    def __init__(self, real, **overrides):
        super().__init__(real.__name__)
        self._real = real
        self.__dict__.update(overrides)

    def __getattr__(self, name):
        return getattr(self._real, name)


def _promoting_cross(a, b, dim=None):
    import torch

    dtype = torch.promote_types(a.dtype, b.dtype)
    return torch.cross(a.to(dtype), b.to(dtype), dim=dim)


@contextlib.contextmanager
def attention_branch(orig, branch: str | None):
    """Force `SelfAttention`'s branch: "tokens" = the flash-attn one in any dtype, "heads" = the float32 one."""
    import torch

    real = orig.geo_transformer.torch
    if branch == "tokens":
        orig.geo_transformer.torch = _DtypeView(torch, float16=torch.float32)
    elif branch == "heads":
        orig.geo_transformer.torch = _DtypeView(torch, float16=torch.complex128, bfloat16=torch.complex128)
    try:
        yield
    finally:
        orig.geo_transformer.torch = real


def run_original(orig, ser, gen, inputs: dict, device, autocast: bool, branch: str | None,
                 trace: dict | None = None) -> dict:
    """One forward of both networks; returns the fixture's outputs (float32 numpy, spatial shapes int64)."""
    import torch

    out, handles = {}, []
    host = lambda t: t.detach().float().cpu().numpy()

    def hook(key, pick=lambda o: o):
        return lambda module, args, result: out.__setitem__(key, host(pick(result)))

    for prefix, net in (("serializer", ser), ("lrm_generator", gen)):
        handles.append(net.encoder.model.register_forward_hook(
            hook(f"{prefix}__dino_last_feature_map", lambda o: o.feature_maps[-1])))
        handles.append(net.encoder.register_forward_hook(hook(f"{prefix}__image_feats", lambda o: o[0])))
        handles.append(net.encoder.register_forward_hook(
            lambda m, a, o, k=f"{prefix}__spatial_shapes": out.__setitem__(k, o[1].cpu().numpy().astype("int64"))))
    layer0 = gen.transformer.layers[0]
    for name in ("self_attention", "cross_attention", "feed_forward"):
        handles.append(getattr(layer0, name).register_forward_hook(hook(f"layer0__{name}_out")))
    if trace is not None:
        handles += _dtype_hooks(ser, "serializer", trace) + _dtype_hooks(gen, "lrm_generator", trace)
    rays, project = orig.dino2_wrapper.get_ray_embedding, gen.transformer.project_points

    def record_rays(*a):
        result = rays(*a)
        out["ray_embedding"] = host(result)
        return result

    def record_points(*a):
        result = project(*a)
        out["reference_points_cam"] = host(result)
        return result

    orig.dino2_wrapper.get_ray_embedding, gen.transformer.project_points = record_rays, record_points
    if autocast and device.type == "cpu":  # CUDA's autocast promotes cross's inputs to the widest type, CPU's not
        orig.dino2_wrapper.torch = _DtypeView(torch, cross=_promoting_cross)
    images, c2ws, ks, xyzs = (inputs[k].to(device) for k in ("images", "c2ws", "Ks", "xyzs"))
    region = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if autocast else contextlib.nullcontext
    try:
        with torch.no_grad(), attention_branch(orig, branch):
            with region():  # as TransformerSerializer.forward
                out["occupancy_logits"] = host(ser.pred_occupancy(images, c2ws.clone(), ks.clone()))
            with region():  # as GeoLRM.forward_latents
                latents = gen.forward_latents(xyzs, images, ks.clone(), c2ws.clone(), xyz_scale=ser.xyz_scale)
            out["latents"] = host(latents)
            out["gaussians"] = host(gen.renderer.get_gaussians(xyzs, latents))  # outside autocast
    finally:
        orig.dino2_wrapper.get_ray_embedding, orig.dino2_wrapper.torch = rays, torch
        del gen.transformer.project_points
        for h in handles:
            h.remove()
    return out


def _dtype_hooks(net, prefix: str, trace: dict) -> list:
    """Record, per module path (layer indices folded), the dtypes of its floating inputs and outputs."""
    import torch

    def dtypes(x):
        if isinstance(x, torch.Tensor):
            return [str(x.dtype).replace("torch.", "")] if x.is_floating_point() else []
        if isinstance(x, (tuple, list)):
            return [d for y in x for d in dtypes(y)]
        return dtypes(getattr(x, "feature_maps", ()))

    handles = []
    for name, module in net.named_modules():
        key = prefix + "." + re.sub(r"[.]\d+[.]", ".N.", name + ".").rstrip(".") if name else prefix

        def record(m, args, result, key=key):
            trace.setdefault(key, (type(m).__name__, dtypes(args), dtypes(result)))
        handles.append(module.register_forward_hook(record))
    return handles


def write_fixture(tmp: str, ser, gen, dino_cfg, cfg: dict, inputs: dict, outputs: dict, meta: dict) -> None:
    import numpy as np
    from safetensors.torch import save_file

    sd = {f"{p}.{k}": v.detach().cpu().contiguous() for p, net in (("serializer", ser), ("lrm_generator", gen))
          for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    save_file(sd, os.path.join(tmp, "state_dict.safetensors"))
    np.savez(os.path.join(tmp, "inputs.npz"), xyz_scale=np.float32(ser.xyz_scale),
             **{k: inputs[k].numpy() for k in ("images", "c2ws", "Ks", "xyzs")})
    for name, arrays in outputs.items():
        np.savez(os.path.join(tmp, name), **arrays)
    config = dict(serializer=cfg["serializer"], lrm_generator=cfg["lrm_generator"],
                  dinov2_config=json.loads(dino_cfg.to_json_string()), variant="released",
                  num_views=int(inputs["images"].shape[1]), image_size=int(inputs["images"].shape[-1]),
                  num_anchors=int(inputs["xyzs"].shape[1]), azimuths=inputs["azimuths"],
                  elevations=inputs["elevations"], radius=1.5, fov_deg=39.6, xyz_scale=float(ser.xyz_scale),
                  generator=meta)
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(config, f, indent=1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="fixture directory to create (must not exist)")
    p.add_argument("--official", default=DEFAULT_OFFICIAL, help="the original code (with src/ and shims/)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--autocast", action="store_true", help="also record the original's bf16 autocast runs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layers", type=int, default=2, help="transformer layers of each network")
    p.add_argument("--dino-layers", type=int, default=2)
    p.add_argument("--views", type=int, default=2)
    p.add_argument("--size", type=int, default=224, help="image side (a multiple of 28)")
    p.add_argument("--anchors", type=int, default=512)
    p.add_argument("--trace-dtypes", action="store_true",
                   help="print the dtypes each module of the original sees and returns under autocast")
    args = p.parse_args(argv)
    out_dir = os.path.abspath(args.out)
    problems = [f"{out_dir} already exists" if os.path.exists(out_dir) else None,
                f"--official {args.official}: no src/models/geolrm.py there"
                if not os.path.exists(os.path.join(args.official, "src", "models", "geolrm.py")) else None,
                f"--size {args.size} is not a positive multiple of 28" if args.size <= 0 or args.size % 28 else None,
                "--layers, --dino-layers, --views and --anchors must be positive"
                if min(args.layers, args.dino_layers, args.views, args.anchors) <= 0 else None]
    if any(problems):
        print(f"error: {next(m for m in problems if m)}", file=sys.stderr)
        return 2
    import torch
    import transformers

    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    if device.type == "cuda":  # float32 means float32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    orig = import_original(os.path.abspath(args.official), args.device)
    cfg = released_config(args.layers, args.dino_layers)
    ser, gen, dino_cfg = build(orig, cfg, args.seed)
    inputs = make_inputs(orig, ser, args.views, args.size, args.anchors, args.seed)
    ser.to(device), gen.to(device)
    ser.xyzs = ser.xyzs.to(device)
    trace = {} if args.trace_dtypes else None
    outputs = {}
    for name, (autocast, branch) in VARIANTS.items():
        if name == "outputs.npz" or args.autocast:
            outputs[name] = run_original(orig, ser, gen, inputs, device, autocast, branch,
                                         trace if name == "outputs_autocast.npz" else None)
    meta = dict(tool="tools/make_parity_fixture_released.py", argv=sys.argv[1:] if argv is None else list(argv),
                device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu", torch=torch.__version__,
                transformers=transformers.__version__, autocast=f"torch.autocast('{device.type}', bfloat16)",
                files={n: f"autocast={a}, attention branch={b or 'as shipped'}" for n, (a, b) in VARIANTS.items()
                       if n in outputs})
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(out_dir) + ".tmp-", dir=parent)
    os.chmod(tmp, 0o755)
    try:
        write_fixture(tmp, ser.cpu(), gen.cpu(), dino_cfg, cfg, inputs, outputs, meta)
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if trace is not None:
        print(f"{'module (under autocast)':58s} {'class':26s} inputs -> outputs")
        for key, (cls, ins, outs) in trace.items():
            print(f"{key:58s} {cls:26s} {','.join(ins) or '-'} -> {','.join(outs) or '-'}")
    print(f"wrote {out_dir}: {', '.join(sorted(outputs))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
