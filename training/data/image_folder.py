"""Plain folder of unlabelled images (the user's own real camera frames)."""
from pathlib import Path

from .frame_source import FrameSource, Sample
from .image_files import DataError, read_rgb

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.ppm', '.tif', '.tiff', '.webp')


class ImageFolderReader(FrameSource):
    """Every image file under ``root`` (sorted by relative path), without ground truth."""

    def __init__(self, root, recursive=True, suffixes=IMAGE_SUFFIXES, skip_bad=False):
        super().__init__(skip_bad)
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f'{self.root}: image folder not found')
        suffixes = {s.lower() if s.startswith('.') else '.' + s.lower() for s in suffixes}
        files = self.root.rglob('*') if recursive else self.root.iterdir()
        for path in sorted(p for p in files if p.is_file() and p.suffix.lower() in suffixes):
            rel = path.relative_to(self.root)
            self.add(Sample(rel.as_posix(), rel.parent.as_posix(), {'image': path}))
        if not self.samples and not self.skipped:
            raise DataError(f'{self.root}: no images with suffixes {sorted(suffixes)}')

    def load_sample(self, sample):
        """Decode the image."""
        return {'image': read_rgb(sample.paths['image'])}
