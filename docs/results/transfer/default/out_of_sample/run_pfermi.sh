#!/bin/bash
# Out-of-sample check of the new default: perovskites Fermi level (a task not used to choose it),
# 1,000 training crystals, validation/test 1,000 each, 200 epochs, 3 seeds; scratch, default (mp-multi-33k), crystal-twins
cd "$(dirname "$0")/../../../../.."  # the repository; data in ../shared/data
export PYTHONPATH=src OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
for seed in 0 1 2; do
  for method in scratch default crystal-twins; do
    out=runs/pfermi/seed$seed/$method
    [ -f $out/metrics.json ] && continue
    if [ $method = scratch ]; then start=--from-scratch; else start="--pretrained $method"; fi
    flags=""; [ -d $out ] && flags=--resume
    .venv/bin/python -m crystaltwins.cli.main finetune ../shared/data/perovskites.csv.gz --target fermi_level --unit eV \
      $start --seed $seed --max-train 1000 --max-eval 1000 --epochs 200 --out $out --no-progress --no-plots $flags
  done
done
