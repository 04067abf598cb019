"""experiments/colab_reproduction.ipynb runs headlessly, top to bottom, on the :smoke preset."""

import json
import os

import nbclient
import nbformat

from conftest import write_folder_tree

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "experiments", "colab_reproduction.ipynb")


def test_colab_notebook_runs_headlessly(tmp_path, monkeypatch):
  write_folder_tree(tmp_path / "tree", {"train": {"c0": 32, "c1": 8},
                                        "test": {"c0": 8, "c1": 8}})
  workdir = tmp_path / "run"
  monkeypatch.setenv("MSCM_CONFIG", "configs/folder_oneclass.py")
  monkeypatch.setenv("MSCM_PRESET", "smoke")
  monkeypatch.setenv("MSCM_NORMAL_CLASS", "c0")
  monkeypatch.setenv("MSCM_WORKDIR", str(workdir))
  monkeypatch.setenv("MSCM_OVERRIDES", json.dumps({
      "dataset.data_dir": str(tmp_path / "tree"), "dataset.image_size": 16,
      "memory.scales": ["res3", "pooled"]}))
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                          resources={"metadata": {"path": REPO}}).execute()
  text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.get("outputs", []) if o.get("output_type") == "stream")
  shown = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
           if o.get("output_type") == "display_data"]
  # The table (Markdown), the combined ROC and a heat map per memory scale, inline.
  assert any("text/markdown" in o["data"] and "| **mscm** |" in o["data"]["text/markdown"]
             for o in shown)
  assert sum("image/png" in o["data"] for o in shown) >= 3
  assert "heatmaps_res3.png" in text and "mscm score" in text
  assert (workdir / "results.json").exists() and len(list((workdir / "my_images").iterdir())) == 8
