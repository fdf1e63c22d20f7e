"""An interactive view of a patient's result that works offline: ``viewer.html``.

One self-contained page: NiiVue (the WebGL NIfTI viewer of the NiiVue project, BSD-2-Clause;
vendored gzipped as ``assets/niivue.umd.js.gz``, see ``assets/NIIVUE_LICENSE.txt``) inlined, and the
volumes inlined as base64 NIfTI: the scan, the predicted density and the plans, each a layer
the reader can switch on and off. Nothing is fetched, so the page opens from a file or an
e-mail attachment. Neurological convention (the patient's left on the screen's left), as the
report's figures; NiiVue prints the orientation letters on every view.

The page sets ``data-rendered`` on its ``<body>`` once NiiVue has drawn every layer ("ok"), or
the error it met: the test opens the page in headless Chromium and reads it back.
"""

from __future__ import annotations

import base64
import gzip
import html
import json
from importlib import resources
from pathlib import Path

import nibabel as nib
import numpy as np

from gliomatch.files import write_text_atomic

__all__ = ["NIIVUE_VERSION", "write_viewer"]

NIIVUE_VERSION = "0.69.0"


def _nifti_b64(img: nib.Nifti1Image, kind: str) -> str:
    """The image as a gzipped NIfTI in base64, made small for viewing: the scan as uint8
    between its 0.5th and 99.5th percentiles, a density as uint8 with slope 1/255, a mask as
    uint8; the affine and orientation codes kept."""
    data = np.asarray(img.dataobj, dtype=np.float32)
    if kind == "scan":
        pos = data[data > 0]
        lo, hi = np.percentile(pos, [0.5, 99.5]) if pos.size else (0.0, 1.0)
        arr = np.clip((data - lo) / max(hi - lo, 1e-6) * 255, 0, 255).astype(np.uint8)
        slope = 1.0
    elif kind == "density":
        arr, slope = np.rint(np.clip(data, 0, 1) * 255).astype(np.uint8), 1.0 / 255
    else:
        arr, slope = (data > 0).astype(np.uint8), 1.0
    out = nib.Nifti1Image(arr, img.affine)
    qform, qcode = img.get_qform(coded=True)
    sform, scode = img.get_sform(coded=True)
    out.set_qform(img.affine if qform is None else qform, int(qcode or 1))
    out.set_sform(img.affine if sform is None else sform, int(scode or 1))
    out.header.set_slope_inter(slope, 0.0)
    out.header.set_xyzt_units("mm")
    return base64.b64encode(gzip.compress(out.to_bytes(), compresslevel=6, mtime=0)).decode()


def write_viewer(out, anatomy: nib.Nifti1Image, layers, *, title: str = "gliomatch") -> Path:
    """Write ``out/viewer.html``: ``anatomy`` with ``layers`` (``(label, image, kind, colormap,
    opacity)``, ``kind`` ``"density"`` or ``"mask"``; images on the anatomy's grid) in NiiVue,
    every layer a checkbox. Returns the page's path."""
    packed = resources.files("gliomatch.patient").joinpath("assets/niivue.umd.js.gz")
    js = gzip.decompress(packed.read_bytes()).decode("utf-8")
    vols = [{"name": "scan.nii.gz", "label": "scan", "b64": _nifti_b64(anatomy, "scan"),
             "colormap": "gray", "opacity": 1.0, "cal_min": 0, "cal_max": 255}]  # fmt: skip
    for i, (label, img, kind, cmap, opacity) in enumerate(layers):
        vols.append(
            {
                "name": f"layer{i}.nii.gz",
                "label": label,
                "b64": _nifti_b64(img, kind),
                "colormap": cmap,
                "opacity": opacity,
                "cal_min": 0.01 if kind == "density" else 0.5,
                "cal_max": 1.0,
            }
        )
    boxes = "".join(
        f'<label><input type="checkbox" checked data-layer="{i}"> {html.escape(v["label"])}'
        "</label> "
        for i, v in enumerate(vols)
        if i > 0
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8">
<title>{html.escape(title)}: interactive view</title>
<style>body{{font-family:sans-serif;margin:0;background:#111;color:#eee}}
#bar{{padding:6px}}#view{{width:100%;height:85vh}}#gl{{width:100%;height:100%;display:block}}
</style></head>
<body data-rendered="loading"><div id="bar"><b>{html.escape(title)}</b> — neurological
convention (the patient's left on the left); click to move the crosshair, scroll to change the
slice. Layers: {boxes}<span id="status">loading…</span></div>
<div id="view"><canvas id="gl"></canvas></div>
<script>/* NiiVue {NIIVUE_VERSION}, BSD-2-Clause (github.com/niivue/niivue) */
{js}
</script>
<script>
const VOLUMES = {json.dumps(vols)};
(async () => {{
  try {{
    const nv = new niivue.Niivue({{isRadiologicalConvention: false, show3Dcrosshair: true,
      backColor: [0, 0, 0, 1], isColorbar: true}});
    await nv.attachTo("gl");
    for (const v of VOLUMES) {{
      const img = await niivue.NVImage.loadFromBase64({{base64: v.b64, name: v.name,
        colormap: v.colormap, opacity: v.opacity, cal_min: v.cal_min, cal_max: v.cal_max}});
      nv.addVolume(img);
    }}
    nv.setSliceType(nv.sliceTypeMultiplanar);
    document.querySelectorAll("input[data-layer]").forEach((box) => {{
      box.addEventListener("change", () => {{
        const i = Number(box.dataset.layer);
        nv.setOpacity(i, box.checked ? VOLUMES[i].opacity : 0);
      }});
    }});
    nv.drawScene();
    document.body.dataset.volumes = String(nv.volumes.length);
    document.body.dataset.rendered = "ok";
    document.getElementById("status").textContent = "";
  }} catch (e) {{
    document.body.dataset.rendered = "error: " + e;
    document.getElementById("status").textContent = "could not draw: " + e;
  }}
}})();
</script></body></html>"""
    return write_text_atomic(Path(out) / "viewer.html", page)
