"""Two-stage transfer: stage-1 source modules and stage-2 transfer methods (installed as ``plmkit.mtl``)."""
