"""converter: `yurtctl convert/revert` and the cloud-side `yurt-manager` controller."""
