"""The PyTorch fence: everything that imports PyTorch is here (models, training, DP-SGD, state_dict <->
numpy conversions, pretrained weights). The coordinator process never imports this package; its
helper process and the hospitals do."""
