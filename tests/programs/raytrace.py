"""Raytrace: a tiny recursive ray tracer rendering one image row per callback.

Scaled-down port of the classic raytrace benchmark (pyperformance / V8
style): spheres and a checkerboard plane, point lights with shadows, and
reflections up to depth 3, rendered at 40x20.  Each callback renders half a
row (the partial row waits in program state between callbacks); a finished
row is printed as ASCII art with a checksum of its 8-bit RGB values.  The
image rows are accumulated in a Canvas object.
Migration features: a class with __slots__ (Vector) used everywhere,
ordinary classes (Ray, Sphere, Plane, Camera, Light, surfaces, Scene),
a surface class hierarchy with super(), a list of polymorphic objects,
module-level constants, an instance attribute holding a bound method
(Camera.project), `from math import sqrt` (a builtin function in globals),
bytearray image rows, float tuples.
"""

from math import sqrt

WIDTH, HEIGHT = 40, 20
MAX_DEPTH = 3
EPSILON = 1e-5
SHADES = " .:-=+*#%@"


class Vector:
    __slots__ = ("x", "y", "z")

    def __init__(self, x, y, z):
        self.x = x
        self.y = y
        self.z = z

    def dot(self, o):
        return self.x * o.x + self.y * o.y + self.z * o.z

    def cross(self, o):
        return Vector(self.y * o.z - self.z * o.y, self.z * o.x - self.x * o.z,
                      self.x * o.y - self.y * o.x)

    def magnitude(self):
        return sqrt(self.dot(self))

    def __add__(self, o):
        return Vector(self.x + o.x, self.y + o.y, self.z + o.z)

    def __sub__(self, o):
        return Vector(self.x - o.x, self.y - o.y, self.z - o.z)

    def scale(self, f):
        return Vector(self.x * f, self.y * f, self.z * f)

    def normalized(self):
        return self.scale(1.0 / self.magnitude())

    def reflect_through(self, normal):
        return self - normal.scale(2.0 * self.dot(normal))

    def __repr__(self):
        return f"Vector({self.x:.3f}, {self.y:.3f}, {self.z:.3f})"


ZERO = Vector(0.0, 0.0, 0.0)
UP = Vector(0.0, 1.0, 0.0)


class Ray:
    def __init__(self, origin, direction):
        self.origin = origin
        self.direction = direction.normalized()

    def point_at(self, t):
        return self.origin + self.direction.scale(t)


class Sphere:
    def __init__(self, centre, radius):
        self.centre = centre
        self.radius = radius

    def intersect(self, ray):
        cp = self.centre - ray.origin
        v = cp.dot(ray.direction)
        disc = self.radius * self.radius - (cp.dot(cp) - v * v)
        if disc < 0.0:
            return None
        t = v - sqrt(disc)
        return t if t > EPSILON else None

    def normal_at(self, p):
        return (p - self.centre).normalized()


class Plane:
    def __init__(self, point, normal):
        self.point = point
        self.normal = normal.normalized()

    def intersect(self, ray):
        d = ray.direction.dot(self.normal)
        if abs(d) < EPSILON:
            return None
        t = (self.point - ray.origin).dot(self.normal) / d
        return t if t > EPSILON else None

    def normal_at(self, p):
        return self.normal


class Surface:
    def __init__(self, base, specular=0.2, lambert=0.6, ambient=0.2):
        self.base = base
        self.specular = specular
        self.lambert = lambert
        self.ambient = ambient

    def base_colour_at(self, p):
        return self.base

    def colour_at(self, scene, ray, p, normal, depth):
        b = self.base_colour_at(p)
        c = (0.0, 0.0, 0.0)
        if self.specular > 0.0 and depth < MAX_DEPTH:
            reflected = Ray(p, ray.direction.reflect_through(normal))
            rc = scene.ray_colour(reflected, depth + 1)
            c = add(c, mul(rc, self.specular))
        lambert = 0.0
        for light in scene.lights:
            if scene.visible(p, light.position):
                contrib = (light.position - p).normalized().dot(normal)
                if contrib > 0.0:
                    lambert += contrib * light.intensity
        lambert = min(1.0, lambert)
        c = add(c, mul(b, lambert * self.lambert))
        c = add(c, mul(b, self.ambient))
        return c


class Checkerboard(Surface):
    def __init__(self, base, other, size, **kw):
        super().__init__(base, **kw)
        self.other = other
        self.size = size

    def base_colour_at(self, p):
        v = p.scale(1.0 / self.size)
        if (int(abs(v.x) + 0.5) + int(abs(v.y) + 0.5) + int(abs(v.z) + 0.5)) % 2:
            return self.other
        return self.base


def add(a, b):
    return (a[0] + b[0], a[1] + b[1], a[2] + b[2])


def mul(a, f):
    return (a[0] * f, a[1] * f, a[2] * f)


class Light:
    def __init__(self, position, intensity):
        self.position = position
        self.intensity = intensity


class Camera:
    def __init__(self, eye, look_at, fov_width, fov_height):
        self.eye = eye
        self.forward = (look_at - eye).normalized()
        self.right = self.forward.cross(UP).normalized()
        self.up = self.right.cross(self.forward).normalized()
        self.fov_width = fov_width
        self.fov_height = fov_height
        self.project = self.ray_for_pixel   # bound method kept as an attribute

    def ray_for_pixel(self, x, y):
        xcomp = self.right.scale((x / (WIDTH - 1) - 0.5) * self.fov_width)
        ycomp = self.up.scale((0.5 - y / (HEIGHT - 1)) * self.fov_height)
        return Ray(self.eye, self.forward + xcomp + ycomp)


class Scene:
    def __init__(self, camera):
        self.camera = camera
        self.objects = []     # (shape, surface) pairs
        self.lights = []
        self.background = (0.05, 0.05, 0.1)
        self.rays = 0

    def add(self, shape, surface):
        self.objects.append((shape, surface))

    def first_hit(self, ray):
        best = None
        for shape, surface in self.objects:
            t = shape.intersect(ray)
            if t is not None and (best is None or t < best[0]):
                best = (t, shape, surface)
        return best

    def ray_colour(self, ray, depth=0):
        self.rays += 1
        hit = self.first_hit(ray)
        if hit is None:
            return self.background
        t, shape, surface = hit
        p = ray.point_at(t)
        return surface.colour_at(self, ray, p, shape.normal_at(p), depth)

    def visible(self, p, q):
        d = q - p
        dist = d.magnitude()
        hit = self.first_hit(Ray(p, d))
        return hit is None or hit[0] > dist


class Canvas:
    def __init__(self, width, height):
        self.width = width
        self.height = height
        self.rows = []

    def checksum(self):
        total = 0
        for y, row in enumerate(self.rows):
            total = (total * 31 + sum(row) * (y + 1)) % 1000000007
        return total


def to_byte(v):
    return max(0, min(255, int(v * 255.0 + 0.5)))


camera = Camera(Vector(0.0, 2.2, 4.0), Vector(0.0, 1.4, -4.0), 1.3, 0.75)
scene = Scene(camera)
scene.add(Sphere(Vector(1.0, 2.0, -7.0), 2.0), Surface((1.0, 1.0, 0.0)))
scene.add(Sphere(Vector(-2.2, 1.2, -3.0), 1.2), Surface((0.2, 0.6, 1.0), specular=0.5))
scene.add(Sphere(Vector(1.8, 0.8, -1.0), 0.8), Surface((1.0, 0.3, 0.3)))
scene.add(Plane(Vector(0.0, 0.0, 0.0), UP),
          Checkerboard((1.0, 1.0, 1.0), (0.1, 0.1, 0.1), 1.5, specular=0.3))
scene.lights.append(Light(Vector(-10.0, 100.0, 30.0), 0.8))
scene.lights.append(Light(Vector(8.0, 10.0, 5.0), 0.4))
canvas = Canvas(WIDTH, HEIGHT)
progress = {"row": 0, "x": 0, "pixels": bytearray(), "art": []}


def render_half_row():
    y, x0 = progress["row"], progress["x"]
    row = progress["pixels"]
    art = progress["art"]
    for x in range(x0, x0 + WIDTH // 2):
        c = scene.ray_colour(camera.project(x, y))
        rgb = [to_byte(v) for v in c]
        row.extend(rgb)
        lum = (0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]) / 256.0
        art.append(SHADES[int(lum * len(SHADES))])
    if x0 == 0:
        progress["x"] = WIDTH // 2
        things.set_timeout(render_half_row, 0.01)
        return
    canvas.rows.append(row)
    progress.update(x=0, pixels=bytearray(), art=[])
    print(f"{y:2d} |{''.join(art)}| sum={sum(row):6d}")
    progress["row"] = y + 1
    if progress["row"] < HEIGHT:
        things.set_timeout(render_half_row, 0.01)
    else:
        print(f"result: {WIDTH}x{HEIGHT} image, {scene.rays} rays, checksum {canvas.checksum()}")


things.set_timeout(render_half_row, 0.01)
