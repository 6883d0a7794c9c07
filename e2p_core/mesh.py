"""Depth (+ image, + normals) to a textured triangle mesh and a point cloud, encoded as GLB and PLY.

The geometry is a pinhole back-projection of a depth map: pixel centre (c + 0.5, r + 0.5) at planar depth z lies
at ``z * ((c + 0.5 - W / 2) / f, (r + 0.5 - H / 2) / f, 1)`` in OpenCV camera space, with the focal length f from
a horizontal field of view. Vertices are stored in glTF's camera frame (+X right, +Y up, +Z towards the viewer),
so the camera sits at the origin looking down -Z and every viewer shows the scene as the photo was taken.

Neighbouring pixels become two triangles per grid quad. Across a depth discontinuity (an object's silhouette in
front of the background) those triangles would form a "rubber sheet" that the camera sees almost edge-on, so a
quad is dropped when one of its triangles is seen more obliquely than ``max_view_angle`` degrees. The test runs
on every full-resolution pixel quad, before any stride is applied, so a coarse mesh cuts the same edges as a fine
one.

Only numpy, torch and Pillow (all shipped with ComfyUI) are used: GLB and PLY are encoded here.
"""

from __future__ import annotations

import io
import json
import math
import struct
from dataclasses import dataclass

import numpy as np
import torch

from . import representations

DEPTH_KINDS = ("sqrt_depth", "metric_depth", "relative_depth")
MIN_FOV_DEGREES = 1.0
MAX_FOV_DEGREES = 179.0
DEFAULT_MAX_VIEW_ANGLE = 88.0
GLB_GENERATOR = "Edit2Perceive for ComfyUI"

OPENCV_TO_GLTF = np.array([1.0, -1.0, -1.0])   # +Y down, +Z forward  ->  +Y up, +Z towards the viewer

# glTF constants (glTF 2.0 specification, section 5).
GLB_MAGIC = 0x46546C67                # "glTF"
GLB_VERSION = 2
GLB_CHUNK_JSON = 0x4E4F534A           # "JSON"
GLB_CHUNK_BIN = 0x004E4942            # "BIN\0"
GL_FLOAT = 5126
GL_UNSIGNED_INT = 5125
GL_ARRAY_BUFFER = 34962
GL_ELEMENT_ARRAY_BUFFER = 34963
GL_LINEAR = 9729
GL_CLAMP_TO_EDGE = 33071
GL_TRIANGLES = 4


class MeshInputError(ValueError):
    """Depth, image, normals or settings that cannot make a mesh; the message says what to change."""


@dataclass
class DepthMesh:
    """One image's mesh. ``pixels`` are the (row, col) each vertex was taken from (for colours and tests)."""

    vertices: np.ndarray          # [N, 3] float32, glTF camera frame, metres when the depth was metric
    faces: np.ndarray             # [M, 3] uint32, counter-clockwise seen from the camera
    uvs: np.ndarray               # [N, 2] float32, texture coordinates of the pixel centres (v down, as glTF)
    normals: np.ndarray           # [N, 3] float32 unit vertex normals, glTF camera frame
    colors: np.ndarray            # [N, 3] uint8, the image at each vertex
    texture: np.ndarray           # [H, W, 3] uint8, the full-resolution image
    pixels: np.ndarray            # [N, 2] int64 (row, col)
    stride: int                   # pixel step between neighbouring vertices
    focal: float                  # pixels


# ---------------------------------------------------------------------------------------------------------------
# Depth and camera
# ---------------------------------------------------------------------------------------------------------------


def focal_from_fov(width: int, fov_degrees: float) -> float:
    """Focal length in pixels for a horizontal field of view across ``width`` pixels."""
    if not (math.isfinite(fov_degrees) and MIN_FOV_DEGREES <= fov_degrees <= MAX_FOV_DEGREES):
        raise MeshInputError(f"fov_degrees must be between {MIN_FOV_DEGREES:g} and {MAX_FOV_DEGREES:g} (the "
                             f"horizontal field of view of the photo), got {fov_degrees}; a phone's main camera "
                             "is about 65-75, a 50 mm full-frame lens about 40")
    return (width / 2.0) / math.tan(math.radians(fov_degrees) / 2.0)


def metric_depth(depth: np.ndarray, depth_kind: str, near: float, far: float) -> np.ndarray:
    """A depth map of ``depth_kind`` -> planar depth in metres (float64).

    sqrt_depth (E2P Depth's output) is decoded with the scene's near and far distances by the one decoding in
    ``representations``; metric_depth (SqrtDecode's metres) is used as it is; relative_depth (SqrtDecode's linear
    depth rescaled to [0, 1]) is mapped back onto near..far, the range it was rescaled from.
    """
    if depth_kind not in DEPTH_KINDS:
        raise MeshInputError(f"unknown depth_kind '{depth_kind}'; choose one of {', '.join(DEPTH_KINDS)}")
    values = np.asarray(depth, dtype=np.float64)
    if depth_kind == "metric_depth":
        return values
    if not (math.isfinite(near) and math.isfinite(far) and 0.0 <= near < far):
        raise MeshInputError(f"need 0 <= near < far (metres) to turn {depth_kind} into 3D, got near={near}, "
                             f"far={far}")
    if depth_kind == "sqrt_depth":
        return representations.sqrt_depth_to_metric(torch.from_numpy(np.clip(values, 0.0, 1.0)), near,
                                                    far).numpy()
    return near + np.clip(values, 0.0, 1.0) * (far - near)


def grid_positions(size: int, stride: int) -> np.ndarray:
    """Every ``stride``-th pixel index, plus the last one so the mesh reaches the image border."""
    positions = np.arange(0, size, stride)
    if positions[-1] != size - 1:
        positions = np.append(positions, size - 1)
    return positions


def grid_face_count(height: int, width: int, stride: int) -> int:
    return 2 * (len(grid_positions(height, stride)) - 1) * (len(grid_positions(width, stride)) - 1)


def choose_stride(height: int, width: int, stride: int, max_faces: int) -> int:
    """The smallest stride >= ``stride`` whose full grid has at most ``max_faces`` triangles (0 = no limit)."""
    if stride < 1:
        raise MeshInputError(f"stride must be at least 1, got {stride}")
    if max_faces < 0:
        raise MeshInputError(f"max_faces must be 0 (no limit) or positive, got {max_faces}")
    if max_faces == 0:
        return stride
    if max_faces < 2:
        raise MeshInputError(f"max_faces {max_faces} is below one grid cell (2 triangles); use 0 for no limit")
    chosen = stride
    while grid_face_count(height, width, chosen) > max_faces:
        chosen += 1
    return chosen


def back_project(depth: np.ndarray, rows: np.ndarray, cols: np.ndarray, focal: float, height: int,
                 width: int) -> np.ndarray:
    """Depth at pixel centres (rows x cols) -> points [len(rows), len(cols), 3] in the glTF camera frame."""
    x = (cols + 0.5 - width / 2.0) / focal
    y = (rows + 0.5 - height / 2.0) / focal
    z = depth[np.ix_(rows, cols)]
    opencv = np.stack([x[None, :] * z, y[:, None] * z, z], axis=-1)
    return opencv * OPENCV_TO_GLTF


# ---------------------------------------------------------------------------------------------------------------
# Faces and discontinuities
# ---------------------------------------------------------------------------------------------------------------


def _quad_corners(grid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Corners of every grid quad: a = (r, c), b = (r + 1, c), c = (r, c + 1), d = (r + 1, c + 1).

    Its two triangles are (a, b, c) and (c, b, d), both counter-clockwise seen from the camera."""
    return grid[:-1, :-1], grid[1:, :-1], grid[:-1, 1:], grid[1:, 1:]


def seen_too_obliquely(a: np.ndarray, b: np.ndarray, c: np.ndarray, max_view_angle: float) -> np.ndarray:
    """For triangles with corners a, b, c ([..., 3] each): True where the angle between the normal and the line of
    sight to the camera exceeds ``max_view_angle`` degrees (0 = facing the camera, 90 = edge-on); degenerate
    triangles count as edge-on.

    Written out per component and compared as cosines: this runs on every pixel quad of the image."""
    (ax, ay, az), (bx, by, bz), (cx, cy, cz) = (np.moveaxis(corner, -1, 0) for corner in (a, b, c))
    ux, uy, uz, vx, vy, vz = bx - ax, by - ay, bz - az, cx - ax, cy - ay, cz - az
    nx, ny, nz = uy * vz - uz * vy, uz * vx - ux * vz, ux * vy - uy * vx
    sx, sy, sz = -(ax + bx + cx), -(ay + by + cy), -(az + bz + cz)      # towards the camera (3x the centroid)
    facing = nx * sx + ny * sy + nz * sz
    lengths = np.sqrt((nx * nx + ny * ny + nz * nz) * (sx * sx + sy * sy + sz * sz))
    return ~(facing > math.cos(math.radians(max_view_angle)) * lengths) | (lengths == 0)


def broken_pixel_quads(depth: np.ndarray, focal: float, max_view_angle: float, band: int = 256) -> np.ndarray:
    """[H-1, W-1] True where a full-resolution pixel quad has a corner without depth or a triangle seen more
    obliquely than ``max_view_angle``. Worked through in bands of rows to bound memory on large images."""
    height, width = depth.shape
    valid = depth > 0.0
    broken = np.empty((height - 1, width - 1), dtype=bool)
    columns = np.arange(width)
    for top in range(0, height - 1, band):
        rows = np.arange(top, min(top + band, height - 1) + 1)
        a, b, c, d = _quad_corners(back_project(depth, rows, columns, focal, height, width))
        va, vb, vc, vd = _quad_corners(valid[rows])
        corners_valid = va & vb & vc & vd
        oblique = seen_too_obliquely(a, b, c, max_view_angle) | seen_too_obliquely(c, b, d, max_view_angle)
        broken[rows[:-1]] = ~corners_valid | oblique
    return broken


def _any_in_blocks(flags: np.ndarray, row_edges: np.ndarray, col_edges: np.ndarray) -> np.ndarray:
    """For each block [row_edges[i], row_edges[i+1]) x [col_edges[j], col_edges[j+1]): is any flag set?"""
    summed = np.zeros((flags.shape[0] + 1, flags.shape[1] + 1), dtype=np.int64)
    summed[1:, 1:] = np.cumsum(np.cumsum(flags.astype(np.int64), axis=0), axis=1)
    r0, r1 = row_edges[:-1, None], row_edges[1:, None]
    c0, c1 = col_edges[None, :-1], col_edges[None, 1:]
    return (summed[r1, c1] - summed[r0, c1] - summed[r1, c0] + summed[r0, c0]) > 0


def _vertex_normals_from_faces(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted vertex normals (what viewers would otherwise replace with flat shading)."""
    corners = vertices[faces]
    face_normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    normals = np.stack([sum(np.bincount(faces[:, k], weights=face_normals[:, axis], minlength=len(vertices))
                            for k in range(3)) for axis in range(3)], axis=-1)
    lengths = np.linalg.norm(normals, axis=-1, keepdims=True)
    return normals / np.where(lengths > 0, lengths, 1.0)


# ---------------------------------------------------------------------------------------------------------------
# The mesh
# ---------------------------------------------------------------------------------------------------------------


def depth_to_mesh(depth: np.ndarray, image: np.ndarray, fov_degrees: float, normals: np.ndarray | None = None,
                  stride: int = 1, max_faces: int = 0,
                  max_view_angle: float = DEFAULT_MAX_VIEW_ANGLE) -> DepthMesh:
    """Planar metric depth [H, W] + image [H, W, 3] in [0, 1] (+ unit normals [H, W, 3] in the glTF camera frame)
    -> a textured mesh. Pixels with depth <= 0 have no surface and get no vertex."""
    depth = np.asarray(depth, dtype=np.float64)
    image = np.asarray(image)
    if depth.ndim != 2 or min(depth.shape) < 2:
        raise MeshInputError(f"the depth map must be at least 2x2 pixels, got shape {tuple(depth.shape)}")
    height, width = depth.shape
    if image.shape[:2] != (height, width) or image.ndim != 3 or image.shape[2] < 3:
        raise MeshInputError(f"the image is {_describe(image)} but the depth map is {width}x{height}: connect the "
                             "image the depth was predicted from (E2P Depth returns depth at its input's size), "
                             "or scale one to the other's size first")
    if normals is not None and np.asarray(normals).shape[:2] != (height, width):
        raise MeshInputError(f"the normal map is {_describe(np.asarray(normals))} but the depth map is "
                             f"{width}x{height}: run E2P Normal on the same image as E2P Depth")
    bad = ~np.isfinite(depth)
    if bad.any():
        raise MeshInputError(f"the depth map has {int(bad.sum())} NaN or infinite pixels; connect E2P Depth's "
                             "sqrt_depth or a SqrtDecode output (they are always finite), or fill the holes first")
    if not (math.isfinite(max_view_angle) and 0.0 < max_view_angle <= 90.0):
        raise MeshInputError(f"max_view_angle must be in (0, 90] degrees, got {max_view_angle}")
    focal = focal_from_fov(width, fov_degrees)
    valid = depth > 0.0
    if not valid.any():
        raise MeshInputError("the depth map has no pixel with a positive depth; with sqrt_depth or relative_depth "
                             "input, set near above 0")
    stride = choose_stride(height, width, stride, max_faces)
    broken = broken_pixel_quads(depth, focal, max_view_angle)
    rows, cols = grid_positions(height, stride), grid_positions(width, stride)
    points = back_project(depth, rows, cols, focal, height, width)
    keep_quad = ~_any_in_blocks(broken, rows, cols)
    first_faces, second_faces = _grid_faces(len(rows), len(cols), keep_quad)
    faces = np.concatenate([first_faces, second_faces], axis=0)
    if len(faces) == 0:
        raise MeshInputError("no triangle survived: every quad crosses a depth jump steeper than max_view_angle or "
                             "a pixel without depth; raise max_view_angle (90 keeps everything) or lower stride")
    is_used = np.zeros(len(rows) * len(cols), dtype=bool)
    is_used[faces.ravel()] = True
    used = np.flatnonzero(is_used)
    faces = (np.cumsum(is_used) - 1)[faces].astype(np.uint32)      # grid index -> index among the used vertices
    grid_rows, grid_cols = np.divmod(used, len(cols))
    pixel_rows, pixel_cols = rows[grid_rows], cols[grid_cols]
    vertices = points.reshape(-1, 3)[used]
    vertex_normals = _vertex_normals_from_faces(vertices, faces.astype(np.int64))
    if normals is not None:
        given = representations.unit_normals(
            torch.from_numpy(np.asarray(normals, dtype=np.float64)[pixel_rows, pixel_cols])).numpy()
        # A pixel whose colour decodes to no direction (mid-gray) keeps the mesh's own normal: glTF needs unit ones.
        usable = np.linalg.norm(given, axis=-1) > 0.5
        vertex_normals[usable] = given[usable]
    colors = _to_uint8(image[..., :3])
    return DepthMesh(
        vertices=vertices.astype(np.float32), faces=faces,
        uvs=np.stack([(pixel_cols + 0.5) / width, (pixel_rows + 0.5) / height], axis=-1).astype(np.float32),
        normals=vertex_normals.astype(np.float32), colors=colors[pixel_rows, pixel_cols], texture=colors,
        pixels=np.stack([pixel_rows, pixel_cols], axis=-1).astype(np.int64), stride=stride, focal=focal)


def _grid_faces(grid_height: int, grid_width: int, keep_quad: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vertex-grid indices of both triangles of every kept quad (corner order of ``_quad_corners``)."""
    a, b, c, d = (corner[keep_quad] for corner in
                  _quad_corners(np.arange(grid_height * grid_width).reshape(grid_height, grid_width)))
    return np.stack([a, b, c], axis=-1), np.stack([c, b, d], axis=-1)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        return np.ascontiguousarray(image)
    return np.rint(np.clip(np.nan_to_num(image.astype(np.float64)), 0.0, 1.0) * 255.0).astype(np.uint8)


def _describe(array: np.ndarray) -> str:
    shape = tuple(array.shape)
    return f"{shape[1]}x{shape[0]}" if len(shape) >= 2 else f"shape {shape}"


# ---------------------------------------------------------------------------------------------------------------
# Writers
# ---------------------------------------------------------------------------------------------------------------


def _png_bytes(texture: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(texture).save(buffer, format="PNG", compress_level=4)
    return buffer.getvalue()


def _padded(data: bytes, fill: bytes) -> bytes:
    return data + fill * ((4 - len(data) % 4) % 4)


def glb_bytes(mesh: DepthMesh, extras: dict | None = None) -> bytes:
    """A binary glTF 2.0 file: one textured triangle primitive with normals, the image embedded as PNG."""
    blobs = [mesh.vertices.astype("<f4").tobytes(), mesh.normals.astype("<f4").tobytes(),
             mesh.uvs.astype("<f4").tobytes(), mesh.faces.astype("<u4").tobytes(), _png_bytes(mesh.texture)]
    targets = [GL_ARRAY_BUFFER, GL_ARRAY_BUFFER, GL_ARRAY_BUFFER, GL_ELEMENT_ARRAY_BUFFER, None]
    binary, views = b"", []
    for blob, target in zip(blobs, targets):
        view = {"buffer": 0, "byteOffset": len(binary), "byteLength": len(blob)}
        if target is not None:
            view["target"] = target
        views.append(view)
        binary += _padded(blob, b"\x00")
    count = len(mesh.vertices)
    accessors = [
        {"bufferView": 0, "componentType": GL_FLOAT, "count": count, "type": "VEC3",
         "min": mesh.vertices.min(axis=0).tolist(), "max": mesh.vertices.max(axis=0).tolist()},
        {"bufferView": 1, "componentType": GL_FLOAT, "count": count, "type": "VEC3"},
        {"bufferView": 2, "componentType": GL_FLOAT, "count": count, "type": "VEC2"},
        {"bufferView": 3, "componentType": GL_UNSIGNED_INT, "count": int(mesh.faces.size), "type": "SCALAR"},
    ]
    asset = {"version": "2.0", "generator": GLB_GENERATOR}
    if extras:
        asset["extras"] = extras
    document = {
        "asset": asset, "scene": 0, "scenes": [{"nodes": [0]}], "nodes": [{"mesh": 0, "name": "depth_mesh"}],
        "meshes": [{"primitives": [{"attributes": {"POSITION": 0, "NORMAL": 1, "TEXCOORD_0": 2}, "indices": 3,
                                    "material": 0, "mode": GL_TRIANGLES}]}],
        "materials": [{"pbrMetallicRoughness": {"baseColorTexture": {"index": 0}, "metallicFactor": 0.0,
                                                "roughnessFactor": 1.0}, "doubleSided": True}],
        "textures": [{"source": 0, "sampler": 0}],
        "samplers": [{"magFilter": GL_LINEAR, "minFilter": GL_LINEAR, "wrapS": GL_CLAMP_TO_EDGE,
                      "wrapT": GL_CLAMP_TO_EDGE}],
        "images": [{"bufferView": 4, "mimeType": "image/png"}],
        "buffers": [{"byteLength": len(binary)}], "bufferViews": views, "accessors": accessors,
    }
    text = _padded(json.dumps(document, separators=(",", ":")).encode("utf-8"), b" ")
    total = 12 + 8 + len(text) + 8 + len(binary)
    return b"".join([struct.pack("<III", GLB_MAGIC, GLB_VERSION, total), struct.pack("<II", len(text), GLB_CHUNK_JSON),
                     text, struct.pack("<II", len(binary), GLB_CHUNK_BIN), binary])


def ply_bytes(mesh: DepthMesh, comment: str = "") -> bytes:
    """A binary little-endian PLY point cloud of the mesh's vertices with normals and colours (no faces)."""
    lines = ["ply", "format binary_little_endian 1.0"]
    lines += [f"comment {line}" for line in comment.splitlines() if line]
    lines += [f"element vertex {len(mesh.vertices)}", "property float x", "property float y", "property float z",
              "property float nx", "property float ny", "property float nz", "property uchar red",
              "property uchar green", "property uchar blue", "end_header"]
    record = np.dtype([("position", "<f4", 3), ("normal", "<f4", 3), ("color", "u1", 3)])
    rows = np.empty(len(mesh.vertices), dtype=record)
    rows["position"], rows["normal"], rows["color"] = mesh.vertices, mesh.normals, mesh.colors
    return ("\n".join(lines) + "\n").encode("ascii") + rows.tobytes()


@dataclass
class MeshBatch:
    """Meshes of one batch stacked into the tensors of ComfyUI's MESH: [B, N, 3] vertices, [B, F, 3] faces and each
    per-vertex field [B, N, k]; per-item counts when the items differ in size and the MESH can hold counts."""

    vertices: torch.Tensor
    faces: torch.Tensor
    per_vertex: dict[str, torch.Tensor]
    vertex_counts: torch.Tensor | None = None
    face_counts: torch.Tensor | None = None


def _padded_stack(items: list[torch.Tensor], length: int, repeat_last: bool) -> torch.Tensor:
    padded = []
    for item in items:
        missing = length - item.shape[0]
        fill = item[-1:].expand(missing, *item.shape[1:]) if repeat_last else item.new_zeros(missing, *item.shape[1:])
        padded.append(torch.cat([item, fill]))
    return torch.stack(padded)


def batch_meshes(vertices: list[torch.Tensor], faces: list[torch.Tensor], per_vertex: dict[str, list[torch.Tensor]],
                 with_counts: bool) -> MeshBatch:
    """One tensor per field for items of any size. With counts, items are zero-padded and the counts say how much
    is real. Without (a MESH that has no counts), padding repeats an item's last vertex and adds zero-area
    triangles on it, which glTF writers keep and viewers draw as nothing."""
    vertex_counts = [int(v.shape[0]) for v in vertices]
    face_counts = [int(f.shape[0]) for f in faces]
    longest = max(vertex_counts)
    fields = {name: _padded_stack(values, longest, repeat_last=not with_counts) for name, values in per_vertex.items()}
    if len(set(vertex_counts)) == 1 and len(set(face_counts)) == 1:
        return MeshBatch(torch.stack(vertices), torch.stack(faces), fields)
    if with_counts:
        return MeshBatch(_padded_stack(vertices, longest, repeat_last=False),
                         _padded_stack(faces, max(face_counts), repeat_last=False), fields,
                         torch.tensor(vertex_counts, dtype=torch.int64), torch.tensor(face_counts, dtype=torch.int64))
    padded_faces = [torch.cat([f, torch.full((max(face_counts) - f.shape[0], 3), count - 1, dtype=f.dtype)])
                    for f, count in zip(faces, vertex_counts)]
    return MeshBatch(_padded_stack(vertices, longest, repeat_last=True), torch.stack(padded_faces), fields)
