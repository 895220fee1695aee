"""Published AlexNet weights brought into alexrepro: Caffe's bvlc_alexnet and torchvision's alexnet."""
