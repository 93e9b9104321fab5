"""`timm_gfnet.predict` and `timm-gfnet predict`: images read as users have them (EXIF orientation, any bit depth,
the model's channels), the model's own labels, results streamed batch by batch."""
import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.models import save_for_hf

from timm_gfnet import load_model
from timm_gfnet.cli import main
from timm_gfnet.predict import predict, read_image


def _tiny(folder, label_names=None, label_descriptions=None, **kwargs) -> torch.nn.Module:
    """A small fixed-size GFNet saved by timm's save_for_hf to `folder` (what `--checkpoint` takes) and loaded back:
    an input of any other size or channel count fails, so a pass means the right one."""
    model = timm.create_model('gfnet_ti', depth=1, embed_dim=32, img_size=64, **kwargs)
    save_for_hf(model, folder, model_config=dict(label_names=label_names, label_descriptions=label_descriptions))
    return load_model(folder).eval()


def _image(path, shape=(50, 70, 3), seed=0):
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)).save(path)
    return path


def _inputs(model: torch.nn.Module) -> list:
    """The batches the model is called with, as a hook sees them."""
    seen = []
    model.register_forward_hook(lambda module, args, out: seen.append(args[0].clone()))
    return seen


def _expected(model: torch.nn.Module, image: Image.Image, topk: int, **args) -> list:
    """Top-k (index, probability) of the model on timm's own eval transform of `image` (`args` override its cfg)."""
    transform = timm.data.create_transform(**timm.data.resolve_model_data_config(model, args=args))
    with torch.no_grad():
        top = model(transform(image)[None]).softmax(-1)[0].topk(topk)
    return [(int(i), float(p)) for p, i in zip(top.values, top.indices)]


def test_photos_are_read_the_right_way_up(tmp_path):
    """A JPEG stored landscape with EXIF orientation 6 (rotate 90 degrees clockwise to view: a portrait phone photo)
    reaches the model as the portrait, as transformers' load_image gives it."""
    stored = np.random.default_rng(0).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation
    Image.fromarray(stored).save(tmp_path / 'phone.jpg', exif=exif, quality=95)
    raw = np.asarray(Image.open(tmp_path / 'phone.jpg').convert('RGB'))  # the decoded pixels, not turned
    upright = np.ascontiguousarray(np.rot90(raw, k=-1))  # clockwise, by numpy
    assert upright.shape == (80, 48, 3)
    assert np.array_equal(np.asarray(read_image(tmp_path / 'phone.jpg')), upright)
    model = _tiny(tmp_path / 'm', num_classes=3)
    seen = _inputs(model)
    list(predict(model, [tmp_path / 'phone.jpg']))
    transform = timm.data.create_transform(**timm.data.resolve_model_data_config(model))
    assert torch.equal(seen[0][0], transform(Image.fromarray(upright)))
    assert not torch.equal(seen[0][0], transform(Image.fromarray(raw)))


@pytest.mark.parametrize('labels,descriptions', [
    (['cat', 'dog', 'bird'], None),
    (['n1', 'n2', 'n3'], {'n1': 'a cat', 'n2': 'a dog', 'n3': 'a bird'}),
])
def test_the_model_own_labels(tmp_path, capsys, labels, descriptions):
    """A folder saved by timm's save_for_hf with label_names (and label_descriptions) prints them."""
    model = _tiny(tmp_path / 'pets', labels, descriptions, num_classes=3)
    image = _image(tmp_path / 'a.png')
    assert main(['predict', str(image), '--checkpoint', str(tmp_path / 'pets'), '--topk', '3']) == 0
    shown = descriptions or dict(zip(labels, labels))
    assert capsys.readouterr().out.splitlines()[1:] == [
        f'  {p:7.2%}  {shown[labels[i]]}' for i, p in _expected(model, Image.open(image).convert('RGB'), 3)]


def test_a_1000_class_head_with_other_labels_is_not_imagenet(tmp_path, capsys):
    model = _tiny(tmp_path / 'parts', [f'part-{i}' for i in range(1000)], num_classes=1000)
    image = _image(tmp_path / 'a.png')
    assert main(['predict', str(image), '--checkpoint', str(tmp_path / 'parts'), '--topk', '2']) == 0
    assert capsys.readouterr().out.splitlines()[1:] == [
        f'  {p:7.2%}  part-{i}' for i, p in _expected(model, Image.open(image).convert('RGB'), 2)]


@pytest.mark.parametrize('in_chans,mode', [(1, 'L'), (4, 'RGBA')])
def test_images_are_read_to_the_model_channels(tmp_path, capsys, in_chans, mode):
    model = _tiny(tmp_path / 'm', in_chans=in_chans, num_classes=5)
    image = _image(tmp_path / 'rgb.png')
    assert main(['predict', str(image), '--checkpoint', str(tmp_path / 'm'), '--topk', '2']) == 0
    assert capsys.readouterr().out.splitlines()[1:] == [
        f'  {p:7.2%}  class {i}' for i, p in _expected(model, Image.open(image).convert(mode), 2)]


def test_other_channel_counts_are_one_line_with_the_way_out(tmp_path, capsys):
    _tiny(tmp_path / 'm', in_chans=2, num_classes=3)
    assert main(['predict', str(_image(tmp_path / 'a.png')), '--checkpoint', str(tmp_path / 'm')]) == 1
    assert capsys.readouterr().err == (
        'timm-gfnet predict: error: The model takes 2-channel input; images are read as 1 (L), 3 (RGB) or 4 (RGBA) '
        'channels: pass it tensors of shape (N, 2, H, W) yourself.\n')


def test_batches_are_bounded_and_streamed(tmp_path, capsys):
    """At most --batch-size images per forward pass, and each batch's results come before the next is read: the
    results of the images before a broken one are printed, then the error."""
    model = _tiny(tmp_path / 'm', num_classes=4)
    seen = _inputs(model)
    images = [_image(tmp_path / f'{i}.png', seed=i) for i in range(5)]
    results = predict(model, images, topk=1, batch_size=2)
    next(results)
    assert [len(b) for b in seen] == [2]  # one batch so far
    assert len(list(results)) == 4 and [len(b) for b in seen] == [2, 2, 1]
    one_by_one = list(predict(model, images, topk=1, batch_size=1))
    for a, b in zip(one_by_one, predict(model, images, topk=1, batch_size=3), strict=True):
        assert a[0][0] == b[0][0] and a[0][1] == pytest.approx(b[0][1], abs=1e-6)  # float sums differ by batch

    (tmp_path / 'broken.png').write_bytes(b'not an image')
    argv = ['predict', str(images[0]), str(images[1]), str(tmp_path / 'broken.png'), '--checkpoint',
            str(tmp_path / 'm'), '--topk', '1', '--batch-size', '1']
    assert main(argv) == 1
    out, err = capsys.readouterr()
    assert out.splitlines()[::2] == [str(images[0]), str(images[1])]
    assert err.startswith(f'timm-gfnet predict: error: {tmp_path / "broken.png"}: cannot read the image (')


def test_images_of_any_bit_depth(tmp_path):
    """The same picture as 8-bit, 16-bit PNG and float TIFF reads the same (Pillow alone would clip the 16-bit one
    to white and the float one to black); other float ranges and broken files are refused, named."""
    x = np.random.default_rng(0).integers(0, 256, (48, 64), dtype=np.uint8)
    Image.fromarray(x).save(tmp_path / 'g8.png')
    Image.fromarray(x.astype(np.uint16) * 257).save(tmp_path / 'g16.png')
    Image.fromarray(x.astype(np.float32) / 255).save(tmp_path / 'gf.tif')
    Image.fromarray(np.stack([x] * 3, -1)).save(tmp_path / 'rgb.png')
    for name in ('g8.png', 'g16.png', 'gf.tif', 'rgb.png'):
        got = np.asarray(read_image(tmp_path / name))
        assert got.shape == (48, 64, 3) and (got == x[..., None]).all(), name
        assert np.array_equal(np.asarray(read_image(tmp_path / name, 'L')), x), name
    assert (np.asarray(Image.open(tmp_path / 'g16.png').convert('RGB')) == 255).mean() > 0.9  # what Pillow does
    Image.fromarray(x.astype(np.float32)).save(tmp_path / 'f255.tif')
    with pytest.raises(ValueError, match=r'f255\.tif: float pixels from 0 to 255, and float images are read as 0 '
                                         r'to 1'):
        read_image(tmp_path / 'f255.tif')
    (tmp_path / 'cut.png').write_bytes((tmp_path / 'g8.png').read_bytes()[:200])
    (tmp_path / 'text.png').write_text('not an image')
    for name in ('cut.png', 'text.png'):
        with pytest.raises(ValueError, match=rf'^{tmp_path / name}: cannot read the image \('):
            read_image(tmp_path / name)


def test_a_checkpoint_file_is_read_at_its_own_size(tmp_path, capsys):
    """A state_dict of gfnet_ti trained at 96x96 with 10 classes (no config beside it): the images go in at 96."""
    model = timm.create_model('gfnet_ti', img_size=96, num_classes=10).eval()
    torch.save(model.state_dict(), tmp_path / 'ti96.pth')
    image = _image(tmp_path / 'a.png')
    assert main(['predict', str(image), '--checkpoint', str(tmp_path / 'ti96.pth'), '--topk', '2']) == 0
    at_96 = _expected(model, Image.open(image).convert('RGB'), 2, input_size=(3, 96, 96))
    assert capsys.readouterr().out.splitlines()[1:] == [f'  {p:7.2%}  class {i}' for i, p in at_96]
