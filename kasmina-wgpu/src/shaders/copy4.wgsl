// A plain 16-byte-per-invocation copy: the bandwidth a compute shader reaches through this
// adapter, the yardstick next to copy_buffer_to_buffer. One dispatch per slice of at most one
// storage binding; the grid is 2D when a slice needs more than 65535 workgroups in x.

@group(0) @binding(0) var<storage, read> src: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read_write> dst: array<vec4<u32>>;

@compute @workgroup_size(256)
fn copy4(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = (wid.x + wid.y * nwg.x) * 256u + lid;
    if (i < arrayLength(&dst)) {
        dst[i] = src[i];
    }
}
