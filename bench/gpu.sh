#!/usr/bin/env bash
# The GPU checks in one run (for a machine with CUDA, e.g. through the device tool): ISBI mean IoU after
# 30 s of training with and without mixed precision, throughput against a bare loop, two learning cases.
#   SEGSUITE_ISBI=path/to/isbi2012 bash bench/gpu.sh
set -u
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
PY=${PY:-python3}
DATA=${SEGSUITE_ISBI:-../shared/data/isbi2012}
export SEGSUITE_ISBI=$DATA
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
echo "== ISBI, 30 s, mixed precision"; $PY bench/isbi.py --seconds 30 --device cuda --data "$DATA"
echo "== ISBI, 30 s, float32"; $PY bench/isbi.py --seconds 30 --device cuda --data "$DATA" --no-amp
echo "== throughput"; $PY bench/throughput.py --seconds 15 --device cuda --models unet,unet-instance,unet3d
echo "== learning"; $PY bench/learning.py --seconds 30 --cases isbi-cells,atlas-3d
