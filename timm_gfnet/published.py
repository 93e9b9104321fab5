"""The authors' published results for their ImageNet-1k weights: pure data for the model cards (the download
links are in the model registry's `default_cfgs`)."""
from typing import Any, Dict

__all__ = ['PUBLISHED']

# The authors' published numbers for their ImageNet-1k weights (README of the original repository): top-1/top-5 (%)
# on the validation set at 224 x 224, parameter and FLOP counts as they state them, and their Google Drive mirrors.
PUBLISHED: Dict[str, Dict[str, Any]] = {
    'gfnet_ti.in1k': dict(
        params='7M', flops='1.3G', top1=74.6, top5=92.2,
        gdrive='https://drive.google.com/file/d/1_xrfC7c_ccZnVicYDnrViOA_T1N-xoHI/view?usp=sharing'),
    'gfnet_xs.in1k': dict(
        params='16M', flops='2.8G', top1=78.6, top5=94.2,
        gdrive='https://drive.google.com/file/d/1paf9gQWdsLXrG58R77yJ3U0FiNINg9xN/view?usp=sharing'),
    'gfnet_s.in1k': dict(
        params='25M', flops='4.5G', top1=80.0, top5=94.9,
        gdrive='https://drive.google.com/file/d/18aRey_1abWNMmSL7TZQ4WxpplLRCDGEl/view?usp=sharing'),
    'gfnet_b.in1k': dict(
        params='43M', flops='7.9G', top1=80.7, top5=95.1,
        gdrive='https://drive.google.com/file/d/1OncnXYAXpdjZBq4JK5Y3xacIHOIMePQo/view?usp=sharing'),
    'gfnet_h_ti.in1k': dict(
        params='15M', flops='2.0G', top1=80.1, top5=95.1,
        gdrive='https://drive.google.com/file/d/1Nrq5sfHD9RklCMl6WkcVrAWI5vSVzwSm/view?usp=sharing'),
    'gfnet_h_s.in1k': dict(
        params='32M', flops='4.5G', top1=81.5, top5=95.6,
        gdrive='https://drive.google.com/file/d/1w4d7o1LTBjmSkb5NKzgXBBiwdBOlwiie/view?usp=sharing'),
    'gfnet_h_b.in1k': dict(
        params='54M', flops='8.4G', top1=82.9, top5=96.2,
        gdrive='https://drive.google.com/file/d/1F900_-yPH7GFYfTt60xn4tu5a926DYL0/view?usp=sharing'),
}
