"""Depth (+ normals) and the photo to a textured 3D mesh (GLB) and a point cloud (PLY) in ComfyUI's output folder.

The geometry and the file writers live in e2p_core.mesh; this node decodes the pack's depth and normal images,
names the files as ComfyUI's savers do and hands the meshes to ComfyUI's own MESH type where the running version
has one, so they flow into SaveGLB, Preview3D and the mesh nodes.
"""

from __future__ import annotations

import os

import folder_paths
import torch
from comfy_api.latest import io

from ..e2p_core import atomic_files, mesh, representations
from ..e2p_core.comfyui import compat
from . import categories
from .depth_nodes import scene_distance_inputs
from .save_nodes import workflow_metadata

DEPTH_KIND_TOOLTIP = ("What the depth input is. sqrt_depth: E2P Depth's output, turned into metres with near and "
                      "far exactly as SqrtDecode's metric_depth does. metric_depth: SqrtDecode's metres (near and far "
                      "unused). relative_depth: SqrtDecode's linear depth in [0, 1], stretched back onto near..far.")
PLY_COMMENT = ("Edit2Perceive depth to 3D: points in the camera frame (+X right, +Y up, +Z towards the viewer; the "
               "camera is at the origin looking down -Z), unit normals, colours from the image")


def _paths_entry(subfolder: str, filename: str) -> tuple[str, dict]:
    """(path relative to the output folder with '/' as Preview3D takes it, the UI entry savers report)."""
    relative = f"{subfolder}/{filename}" if subfolder else filename
    return relative.replace(os.sep, "/"), {"filename": filename, "subfolder": subfolder, "type": "output"}


def _batch_item(images: torch.Tensor, index: int, name: str, batch: int) -> torch.Tensor:
    if images.shape[0] not in (1, batch):
        raise ValueError(f"{name} has {images.shape[0]} images but depth has {batch}; connect as many as depth "
                         "has, or one for all")
    return images[index if images.shape[0] == batch else 0]


class E2PDepthTo3D(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="E2PDepthTo3D",
            display_name="E2P Depth to 3D (GLB mesh / PLY points)",
            category=categories.geometry_estimation(),
            description="Turns depth and the photo into a textured 3D mesh (GLB) and a coloured point cloud (PLY) in "
                        "the output folder. Pixels are lifted through a pinhole camera of the given field of view; "
                        "triangles that would stretch across a depth jump (an object in front of the background) are "
                        "cut out, so there are no rubber sheets. Connect E2P Normal's map for the model's own shading "
                        "normals. Open the GLB with Preview 3D (connect glb_path) or any 3D tool; the mesh output "
                        "feeds ComfyUI's own 3D nodes.",
            **compat.optional_schema_fields(search_aliases=["3d", "mesh", "point cloud", "pointcloud", "glb", "ply",
                                                            "depth to mesh", "depth to 3d", "edit2perceive"]),
            is_output_node=True,
            inputs=[
                io.Image.Input("depth", tooltip="E2P Depth's sqrt_depth, or SqrtDecode's metric_depth or "
                                                "relative_depth (say which in depth_kind). Same size as image."),
                io.Image.Input("image", tooltip="The photo the depth was predicted from: the mesh's texture and the "
                                                "points' colours. Same size as depth."),
                compat.combo_input("depth_kind", list(mesh.DEPTH_KINDS), default="sqrt_depth",
                                   tooltip=DEPTH_KIND_TOOLTIP),
                *scene_distance_inputs(),
                io.Float.Input("fov_degrees", default=60.0, min=mesh.MIN_FOV_DEGREES, max=mesh.MAX_FOV_DEGREES,
                               step=0.5,
                               tooltip="Horizontal field of view of the photo in degrees (phone main camera ~65-75, "
                                       "50 mm full-frame lens ~40). Too wide flattens the scene, too narrow "
                                       "stretches it in depth."),
                io.Int.Input("stride", default=1, min=1, max=64,
                             tooltip="Take every n-th pixel as a vertex (1 = full resolution). The texture keeps the "
                                     "full resolution either way."),
                io.Int.Input("max_faces", default=1000000, min=0, max=100000000, step=1000,
                             tooltip="Upper limit on triangles: the stride is raised until the grid fits (0 = no "
                                     "limit)."),
                io.Float.Input("max_view_angle", default=mesh.DEFAULT_MAX_VIEW_ANGLE, min=1.0, max=90.0, step=0.5,
                               tooltip="Discontinuity cut: a triangle seen more edge-on than this (degrees between "
                                       "its normal and the line of sight) spans a depth jump and is removed, judged "
                                       "on full-resolution pixels. Lower cuts more; 90 keeps every triangle."),
                io.String.Input("filename_prefix", default="edit2perceive/mesh",
                                tooltip="File name start, as in Save Image (a '/' makes a subfolder of the output "
                                        "folder)."),
                io.Image.Input("normal_map", optional=True,
                               tooltip="E2P Normal's normal_map of the same image: the vertex normals (without it "
                                       "they come from the mesh's own shape)."),
                compat.combo_input("normal_convention", list(representations.NORMAL_CONVENTIONS),
                                   default="controlnet_bae", optional=True,
                                   tooltip="The convention E2P Normal was set to (leave its flip_x/y/z off when "
                                           "feeding this node)."),
            ],
            outputs=[
                io.String.Output(display_name="glb_path", tooltip="The first image's GLB, relative to the output "
                                                                  "folder: connect to Preview 3D's model_file."),
                io.String.Output(display_name="ply_path", tooltip="The first image's PLY point cloud, relative to the "
                                                                  "output folder."),
                *([io.Mesh.Output(display_name="mesh",
                                  tooltip="ComfyUI's MESH, one per image (texture, UVs and normals where this "
                                          "ComfyUI's MESH holds them), for SaveGLB, Preview 3D and the mesh nodes.")]
                  if compat.has_native_mesh() else []),
            ],
            hidden=[io.Hidden.prompt, io.Hidden.extra_pnginfo],
        )

    @classmethod
    def execute(cls, depth, image, depth_kind, near, far, fov_degrees, stride, max_faces, max_view_angle,
                filename_prefix, normal_map=None, normal_convention="controlnet_bae") -> io.NodeOutput:
        if depth.dim() != 4 or depth.shape[0] == 0:
            raise ValueError(f"depth must be an IMAGE batch [B, H, W, C] with at least one image, got shape "
                             f"{tuple(depth.shape)}")
        if normal_convention not in representations.NORMAL_CONVENTIONS:
            raise ValueError(f"unknown normal_convention '{normal_convention}'; choose one of "
                             f"{', '.join(representations.NORMAL_CONVENTIONS)}")
        output_dir = folder_paths.get_output_directory()
        atomic_files.check_filename_prefix(filename_prefix, output_dir)
        representations.require_finite_map(depth, "depth")
        representations.require_finite_map(normal_map, "normal_map")
        batch, height, width = depth.shape[:3]
        meshes = []
        for index in range(batch):
            values = mesh.metric_depth(depth[index, ..., :3].float().mean(dim=-1).cpu().numpy(), depth_kind, near,
                                       far)
            photo = _batch_item(image, index, "image", batch)[..., :3].float().cpu().numpy()
            normals = None
            if normal_map is not None:
                colours = _batch_item(normal_map, index, "normal_map", batch)[..., :3].float().cpu()
                native = representations.convert_normals(representations.rgb_to_normals(colours), normal_convention)
                normals = representations.convert_normals(native, "opengl_camera").numpy()
            try:
                meshes.append(mesh.depth_to_mesh(values, photo, fov_degrees, normals, stride, max_faces,
                                                 max_view_angle))
            except mesh.MeshInputError as error:
                raise ValueError(f"image {index + 1} of {batch}: {error}" if batch > 1 else str(error)) from None

        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix, output_dir, width,
                                                                              height)
        extras = cls._extras(cls.hidden.prompt, cls.hidden.extra_pnginfo, depth_kind, near, far, fov_degrees,
                             max_view_angle)
        glb_paths, ply_paths, entries = [], [], []
        with atomic_files.FileBatch() as saving:             # every GLB and PLY of the call, or none
            for index, item in enumerate(meshes):
                stem = f"{name.replace('%batch_num%', str(index))}_{counter + index:05}_"
                info = dict(extras, edit2perceive=dict(extras["edit2perceive"], stride=item.stride,
                                                       focal_px=item.focal))
                saving.write_bytes(os.path.join(folder, f"{stem}.glb"), mesh.glb_bytes(item, info))
                saving.write_bytes(os.path.join(folder, f"{stem}.ply"), mesh.ply_bytes(item, PLY_COMMENT))
                glb_relative, glb_entry = _paths_entry(subfolder, f"{stem}.glb")
                ply_relative, _ = _paths_entry(subfolder, f"{stem}.ply")
                glb_paths.append(glb_relative)
                ply_paths.append(ply_relative)
                entries.append(glb_entry)
        result = (glb_paths[0], ply_paths[0])
        if compat.has_native_mesh():
            result += (cls._native(meshes),)
        return io.NodeOutput(*result, ui={"3d": entries})

    @staticmethod
    def _extras(prompt, extra_pnginfo, depth_kind, near, far, fov_degrees, max_view_angle) -> dict:
        """What the GLB's asset.extras carry: the settings, and the graph as SaveGLB embeds it."""
        settings = {"depth_kind": depth_kind, "fov_degrees": fov_degrees, "max_view_angle": max_view_angle,
                    "frame": "glTF camera frame: +X right, +Y up, +Z towards the viewer; camera at the origin"}
        if depth_kind != "metric_depth":
            settings.update(near=near, far=far)
        return {"edit2perceive": settings, **workflow_metadata(prompt, extra_pnginfo)}

    @staticmethod
    def _native(meshes: list[mesh.DepthMesh]):
        """The meshes as ComfyUI's MESH. Colour comes from the texture alone: glTF multiplies vertex colours into
        the texture, so passing both would darken it."""
        def tensors(name, dtype="float32"):
            return [torch.from_numpy(getattr(item, name).astype(dtype)) for item in meshes]

        texture = torch.stack([torch.from_numpy(item.texture).float() / 255.0 for item in meshes])
        batch = mesh.batch_meshes(tensors("vertices"), tensors("faces", "int64"),
                                  {"uvs": tensors("uvs"), "normals": tensors("normals")}, compat.mesh_has_counts())
        return compat.native_mesh(batch, texture)
