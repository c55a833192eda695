#!/usr/bin/env bash
# Rebuilds everything in docs/ from two trained runs; each file is made by the command above it.
#   bigmodel train configs/optimizers/sgd-momentum.yaml      -> runs/opt-sgd-momentum (Fashion-MNIST)
#   bigmodel train configs/imdb-bert-pretrained.yaml model.pretrained=null model.attention_dropout=0.1 name=imdb-bert-random
#                                                            -> runs/imdb-bert-random (IMDB, bert from scratch)
set -euo pipefail
cd "$(dirname "$0")/.."
FASHION_RUN=${FASHION_RUN:-runs/opt-sgd-momentum}
IMDB_RUN=${IMDB_RUN:-runs/imdb-bert-random}
mkdir -p docs/fashion-mnist docs/imdb

# Two test images of Fashion-MNIST as PNG files, the way a user would hand them to bigmodel.
python - <<'PY'
from PIL import Image
from bigmodel.data.images import read_idx
from bigmodel.data.sources import locate

images = read_idx(locate("fashion-mnist")["test_images"])
for i in (0, 12):
    Image.fromarray(images[i]).save(f"docs/fashion-mnist/test-{i}.png")
PY

bigmodel report "$FASHION_RUN" -o docs/fashion-mnist/report.html
bigmodel explain "$FASHION_RUN" docs/fashion-mnist/test-0.png docs/fashion-mnist/test-12.png \
    -o docs/fashion-mnist/explain
bigmodel explain "$FASHION_RUN" docs/fashion-mnist/test-0.png --method saliency -o docs/fashion-mnist/explain

bigmodel report "$IMDB_RUN" -o docs/imdb/report.html
bigmodel explain "$IMDB_RUN" -o docs/imdb/explain \
    --text "One of the best films I have seen this year: a wonderful cast and a moving, clever story." \
    --text "A dull, predictable plot and wooden acting. I wanted my two hours back."
