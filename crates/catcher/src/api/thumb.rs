//! Attachment thumbnails, as Mailpit draws them: 180x120 JPEG (quality 70)
//! on white. Images at least that big are scaled to cover the box and
//! cropped around the centre; smaller ones are scaled down to fit (never up)
//! and padded; anything that is not a decodable JPEG, PNG or GIF gives a
//! blank thumbnail rather than an error, so a gallery never shows a broken
//! image.

use std::io::Cursor;

use image::imageops::{self, FilterType};
use image::{DynamicImage, ImageReader, Limits, Rgba, RgbaImage};

/// Thumbnail width in pixels.
pub const WIDTH: u32 = 180;
/// Thumbnail height in pixels.
pub const HEIGHT: u32 = 120;

/// Largest decoded image accepted (bytes of pixel memory): a hostile
/// attachment declaring a huge canvas gets a blank thumbnail instead of
/// exhausting memory.
const MAX_ALLOC: u64 = 256 * 1024 * 1024;

fn decode(data: &[u8]) -> Option<DynamicImage> {
    let mut r = ImageReader::new(Cursor::new(data))
        .with_guessed_format()
        .ok()?;
    let mut limits = Limits::default();
    limits.max_alloc = Some(MAX_ALLOC);
    limits.max_image_width = Some(16_384);
    limits.max_image_height = Some(16_384);
    r.limits(limits);
    r.decode().ok()
}

/// The JPEG thumbnail of `data` (a part whose content type is
/// `content_type`).
pub fn thumbnail(data: &[u8], content_type: &str) -> Vec<u8> {
    let mut canvas = RgbaImage::from_pixel(WIDTH, HEIGHT, Rgba([255, 255, 255, 255]));
    let img = if content_type.to_ascii_lowercase().starts_with("image/") {
        decode(data)
    } else {
        None
    };
    if let Some(img) = img {
        let fitted = if img.width() < WIDTH || img.height() < HEIGHT {
            if img.width() > WIDTH || img.height() > HEIGHT {
                img.resize(WIDTH, HEIGHT, FilterType::Lanczos3)
            } else {
                img
            }
        } else {
            img.resize_to_fill(WIDTH, HEIGHT, FilterType::Lanczos3)
        };
        let top = fitted.to_rgba8();
        let x = (WIDTH - top.width().min(WIDTH)) / 2;
        let y = (HEIGHT - top.height().min(HEIGHT)) / 2;
        // Alpha-blends, so transparent PNG/GIF areas come out white.
        imageops::overlay(&mut canvas, &top, x.into(), y.into());
    }
    let rgb = DynamicImage::ImageRgba8(canvas).to_rgb8();
    let mut out = Vec::new();
    let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 70);
    // Encoding an in-memory RGB buffer of a fixed size cannot fail.
    let _ = rgb.write_with_encoder(enc);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32, px: Rgba<u8>) -> Vec<u8> {
        let img = RgbaImage::from_pixel(w, h, px);
        let mut out = Vec::new();
        DynamicImage::ImageRgba8(img)
            .write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
            .unwrap();
        out
    }

    fn decoded(jpeg: &[u8]) -> image::RgbImage {
        let img = image::load_from_memory(jpeg).unwrap();
        assert_eq!((img.width(), img.height()), (WIDTH, HEIGHT));
        img.to_rgb8()
    }

    fn near(p: &image::Rgb<u8>, want: [u8; 3]) -> bool {
        p.0.iter().zip(want).all(|(a, b)| a.abs_diff(b) < 24)
    }

    #[test]
    fn big_images_are_cropped_to_fill_small_ones_padded() {
        let big = decoded(&thumbnail(
            &png(900, 300, Rgba([200, 0, 0, 255])),
            "image/png",
        ));
        assert!(near(big.get_pixel(0, 0), [200, 0, 0]));
        assert!(near(big.get_pixel(179, 119), [200, 0, 0]));
        let small = decoded(&thumbnail(
            &png(40, 20, Rgba([0, 0, 200, 255])),
            "image/png",
        ));
        assert!(near(small.get_pixel(90, 60), [0, 0, 200]));
        assert!(near(small.get_pixel(2, 2), [255, 255, 255]));
        let clear = decoded(&thumbnail(&png(300, 300, Rgba([0, 0, 0, 0])), "image/png"));
        assert!(near(clear.get_pixel(90, 60), [255, 255, 255]));
    }

    #[test]
    fn non_images_and_garbage_give_a_blank_thumbnail() {
        for (data, ct) in [
            (b"%PDF-1.4".to_vec(), "application/pdf"),
            (b"\x89PNG\r\n\x1a\ngarbage".to_vec(), "image/png"),
            (png(10, 10, Rgba([0, 0, 0, 255])), "text/plain"),
        ] {
            let t = decoded(&thumbnail(&data, ct));
            assert!(t.pixels().all(|p| near(p, [255, 255, 255])), "{ct}");
        }
    }
}
