"""The paper's figures from a run: conv1 kernels (Figure 3), training curves, top-5 predictions and fc7
neighbours (Figure 4). One module per figure; `common` holds run resolution, inputs and PNG writes."""
