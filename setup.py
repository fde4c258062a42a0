"""ament_python setup for sim2real_perception (works with colcon and with pip)."""
from glob import glob

from setuptools import find_packages, setup

package_name = 'sim2real_perception'

# Runtime Python deps that rosdep cannot provide live in extras, so colcon builds on a ROS 2
# machine stay plain ament_python and pip users pick what they need.
extras = {
    'torch': ['torch==2.13.0', 'safetensors>=0.4'],
    'onnx': ['onnx>=1.16', 'onnxscript>=0.1', 'onnxruntime>=1.18'],
    'bags': ['rosbags>=0.10'],
    'training': ['tqdm>=4.66', 'tensorboard>=2.16', 'rosbags>=0.10'],
    'test': ['pytest>=8'],
}
extras['all'] = sorted({dep for deps in extras.values() for dep in deps})

setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(exclude=['test', 'test.*', 'bench', 'bench.*']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
        ('share/' + package_name + '/launch', glob('launch/*.launch.py')),
        ('share/' + package_name + '/config', glob('config/*.yaml') + glob('config/*.xml')),
    ],
    install_requires=['setuptools'],
    extras_require=extras,
    zip_safe=True,
    maintainer='sim2real_perception maintainers',
    maintainer_email='maintainers@sim2real-perception.invalid',
    description='Monocular depth and segmentation with a sim2real twin-VAE (ROS 2 node + training).',
    license='Apache-2.0',
    entry_points={
        'console_scripts': [
            'depth_seg_node = sim2real_perception.depth_seg_node:main',
        ],
    },
)
