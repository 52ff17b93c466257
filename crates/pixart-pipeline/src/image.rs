//! [`RgbImage`], the 8-bit RGB picture the pipeline returns, its PNG encoding and decoding and
//! its JPEG encoding (shared by `pixart generate`, `pixart serve`, the demo dataset and the
//! evaluation's contact sheet).
use pixart_core::{Error, Result};

/// An XMP packet whose `dc:description` is `text` (XML-escaped).
fn xmp_description(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            c => escaped.push(c),
        }
    }
    format!(
        "<?xpacket begin=\"\u{feff}\" id=\"W5M0MpCehiHzreSzNTczkc9d\"?>\
         <x:xmpmeta xmlns:x=\"adobe:ns:meta/\"><rdf:RDF xmlns:rdf=\"http://www.w3.org/1999/02/22-rdf-syntax-ns#\">\
         <rdf:Description rdf:about=\"\" xmlns:dc=\"http://purl.org/dc/elements/1.1/\"><dc:description><rdf:Alt>\
         <rdf:li xml:lang=\"x-default\">{escaped}</rdf:li></rdf:Alt></dc:description></rdf:Description></rdf:RDF>\
         </x:xmpmeta><?xpacket end=\"r\"?>"
    )
}

/// The largest picture [`RgbImage::decode`] accepts (8192 x 8192).
pub const MAX_DECODED_PIXELS: u64 = 8192 * 8192;

/// An 8-bit RGB image, rows top to bottom, pixels as `r, g, b`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

fn png_error(e: impl std::fmt::Display) -> Error {
    Error::InvalidInput(format!("PNG: {e}"))
}

impl RgbImage {
    /// `images` in one row, left to right, on the height of the first (rows below a shorter
    /// image's bottom are black): a batch in one picture, as previews show it.
    pub fn side_by_side(images: &[RgbImage]) -> RgbImage {
        let height = images.first().map_or(0, |i| i.height);
        let width: usize = images.iter().map(|i| i.width).sum();
        let mut data = Vec::with_capacity(3 * width * height);
        for y in 0..height {
            for img in images {
                match img.data.get(3 * y * img.width..3 * (y + 1) * img.width) {
                    Some(row) => data.extend_from_slice(row),
                    None => data.resize(data.len() + 3 * img.width, 0),
                }
            }
        }
        RgbImage { width, height, data }
    }

    /// A `width × height` image filled with `rgb`.
    pub fn filled(width: usize, height: usize, rgb: [u8; 3]) -> Self {
        Self {
            width,
            height,
            data: rgb.iter().copied().cycle().take(3 * width * height).collect(),
        }
    }

    /// Fails unless `data` holds exactly `3 · width · height` bytes.
    pub fn check(&self) -> Result<()> {
        if self.width == 0 || self.height == 0 || self.data.len() != 3 * self.width * self.height {
            return Err(Error::Shape(format!(
                "an RGB image of {}x{} needs {} bytes, got {}",
                self.width,
                self.height,
                3 * self.width * self.height,
                self.data.len()
            )));
        }
        Ok(())
    }

    /// The pixel at column `x`, row `y` (`None` outside the image).
    pub fn pixel(&self, x: usize, y: usize) -> Option<[u8; 3]> {
        if x >= self.width || y >= self.height {
            return None;
        }
        let i = 3 * (y * self.width + x);
        match self.data.get(i..i + 3) {
            Some(&[r, g, b]) => Some([r, g, b]),
            _ => None,
        }
    }

    /// The PNG file (8-bit RGB, default compression, so equal images give equal bytes), with
    /// `parameters` in a `parameters` text chunk (tEXt when Latin-1, else iTXt) when given.
    pub fn to_png(&self, parameters: Option<&str>) -> Result<Vec<u8>> {
        self.check()?;
        let mut bytes = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut bytes, self.width as u32, self.height as u32);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            if let Some(p) = parameters {
                if p.chars().all(|c| (c as u32) < 256) {
                    enc.add_text_chunk("parameters".into(), p.into()).map_err(png_error)?;
                } else {
                    enc.add_itxt_chunk("parameters".into(), p.into()).map_err(png_error)?;
                }
            }
            let mut writer = enc.write_header().map_err(png_error)?;
            writer.write_image_data(&self.data).map_err(png_error)?;
            writer.finish().map_err(png_error)?;
        }
        Ok(bytes)
    }

    /// A lossless WebP file, with `parameters` as the XMP `dc:description` when given.
    pub fn to_webp(&self, parameters: Option<&str>) -> Result<Vec<u8>> {
        self.check()?;
        let mut bytes = Vec::new();
        let mut enc = image_webp::WebPEncoder::new(&mut bytes);
        if let Some(p) = parameters {
            enc.set_xmp_metadata(xmp_description(p).into_bytes());
        }
        enc.encode(
            &self.data,
            self.width as u32,
            self.height as u32,
            image_webp::ColorType::Rgb8,
        )
        .map_err(|e| Error::InvalidInput(format!("WebP: {e}")))?;
        Ok(bytes)
    }

    /// The baseline JPEG file at `quality` (1–100), with `comment` in a COM segment (after the
    /// JFIF header; UTF-8, cut to the 65,533 bytes a segment holds) when given.
    pub fn to_jpeg(&self, quality: u8, comment: Option<&str>) -> Result<Vec<u8>> {
        self.check()?;
        if !(1..=100).contains(&quality) {
            return Err(Error::InvalidInput(format!(
                "JPEG quality {quality} is not between 1 and 100"
            )));
        }
        let mut bytes = Vec::new();
        ::image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, quality)
            .encode(
                &self.data,
                self.width as u32,
                self.height as u32,
                ::image::ExtendedColorType::Rgb8,
            )
            .map_err(|e| Error::InvalidInput(format!("JPEG: {e}")))?;
        let Some(text) = comment else {
            return Ok(bytes);
        };
        let mut end = text.len().min(65_533);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let text = &text.as_bytes()[..end];
        // After SOI, and after the APP0 (JFIF) segment when there is one: JFIF wants it first.
        let mut at = 2;
        if bytes.get(2..4) == Some(&[0xFF, 0xE0]) {
            at += 2 + bytes.get(4..6).map_or(0, |l| u16::from_be_bytes([l[0], l[1]]) as usize);
        }
        let len = (text.len() + 2) as u16;
        let mut segment = vec![0xFF, 0xFE];
        segment.extend_from_slice(&len.to_be_bytes());
        segment.extend_from_slice(text);
        bytes.splice(at..at, segment);
        Ok(bytes)
    }

    /// Decodes a PNG, JPEG or WebP image (the format is read from the bytes), turned upright by
    /// its Exif orientation; any colour type and bit depth is converted to 8-bit RGB, alpha
    /// dropped. `what` names the source in errors.
    pub fn decode(bytes: &[u8], what: &str) -> Result<Self> {
        Ok(Self::decode_with_alpha(bytes, what)?.0)
    }

    /// [`Self::decode`], and the 8-bit alpha plane (`width · height`, rows top to bottom) when
    /// the file has one.
    pub fn decode_with_alpha(bytes: &[u8], what: &str) -> Result<(Self, Option<Vec<u8>>)> {
        let bad = |e: &dyn std::fmt::Display| {
            Error::InvalidInput(format!("{what}: not a readable PNG, JPEG or WebP image: {e}"))
        };
        let reader = || {
            ::image::ImageReader::new(std::io::Cursor::new(bytes))
                .with_guessed_format()
                .map_err(|e| bad(&e))
        };
        // The size from the header first: a small file may claim a huge picture.
        let (w, h) = reader()?.into_dimensions().map_err(|e| bad(&e))?;
        if w as u64 * h as u64 > MAX_DECODED_PIXELS {
            return Err(Error::InvalidInput(format!(
                "{what}: a {w}x{h} image is larger than accepted ({MAX_DECODED_PIXELS} pixels)"
            )));
        }
        // Turned upright by the Exif orientation (photos), as diffusers' `load_image` does
        // (`ImageOps.exif_transpose`).
        let mut decoder = reader()?.into_decoder().map_err(|e| bad(&e))?;
        let orientation = ::image::ImageDecoder::orientation(&mut decoder).map_err(|e| bad(&e))?;
        let mut img = ::image::DynamicImage::from_decoder(decoder).map_err(|e| bad(&e))?;
        img.apply_orientation(orientation);
        let (w, h) = (img.width(), img.height());
        let alpha = img
            .color()
            .has_alpha()
            .then(|| img.to_rgba8().pixels().map(|p| p.0[3]).collect());
        let rgb = img.to_rgb8();
        let out = Self {
            width: w as usize,
            height: h as usize,
            data: rgb.into_raw(),
        };
        out.check().map_err(|e| Error::InvalidInput(format!("{what}: {e}")))?;
        Ok((out, alpha))
    }

    /// The image resized to `width × height` (stretched, no crop) with the Lanczos-3 filter of
    /// the `image` crate: the resize of diffusers' `VaeImageProcessor.preprocess` (PIL's
    /// Lanczos; the two filters differ slightly at the edges of their support).
    pub fn resized(&self, width: usize, height: usize) -> Result<RgbImage> {
        if (width, height) == (self.width, self.height) {
            return Ok(self.clone());
        }
        let side = |v: usize| u32::try_from(v).map_err(|_| Error::InvalidInput(format!("image side {v} is too large")));
        let src =
            ::image::RgbImage::from_raw(side(self.width)?, side(self.height)?, self.data.clone()).ok_or_else(|| {
                Error::InvalidInput(format!(
                    "a {}x{} image with {} bytes",
                    self.width,
                    self.height,
                    self.data.len()
                ))
            })?;
        let out = ::image::imageops::resize(
            &src,
            side(width)?,
            side(height)?,
            ::image::imageops::FilterType::Lanczos3,
        );
        Ok(RgbImage {
            width,
            height,
            data: out.into_raw(),
        })
    }

    /// The pixels as 3 planes (r, g, b) of `height × width` f32 in [-1, 1]: `v / 255`, then
    /// `2x − 1`, as diffusers' `VaeImageProcessor` (`pil_to_numpy`, `normalize`).
    pub fn to_planes(&self) -> Vec<f32> {
        let plane = self.width * self.height;
        let mut out = vec![0f32; 3 * plane];
        for (p, px) in self.data.chunks_exact(3).enumerate() {
            for (c, &v) in px.iter().enumerate() {
                out[c * plane + p] = 2.0 * (v as f32 / 255.0) - 1.0;
            }
        }
        out
    }

    /// Decodes an 8-bit RGB or RGBA PNG (alpha is dropped). `what` names the source in errors.
    pub fn from_png(bytes: &[u8], what: &str) -> Result<Self> {
        let bad = |e: &dyn std::fmt::Display| Error::InvalidInput(format!("{what}: not a readable PNG: {e}"));
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = decoder.read_info().map_err(|e| bad(&e))?;
        let size = reader.output_buffer_size().ok_or_else(|| bad(&"image too large"))?;
        let mut buf = vec![0u8; size];
        let info = reader.next_frame(&mut buf).map_err(|e| bad(&e))?;
        if info.bit_depth != png::BitDepth::Eight {
            return Err(bad(&format!("{:?} bits per channel (expected 8)", info.bit_depth)));
        }
        let (w, h) = (info.width as usize, info.height as usize);
        let channels = match info.color_type {
            png::ColorType::Rgb => 3,
            png::ColorType::Rgba => 4,
            other => return Err(bad(&format!("colour type {other:?} (expected RGB or RGBA)"))),
        };
        let row = info.line_size;
        let mut data = Vec::with_capacity(3 * w * h);
        for y in 0..h {
            let line = buf
                .get(y * row..y * row + channels * w)
                .ok_or_else(|| bad(&"short image data"))?;
            for px in line.chunks_exact(channels) {
                data.extend_from_slice(px.get(..3).unwrap_or(&[0, 0, 0]));
            }
        }
        let img = Self {
            width: w,
            height: h,
            data,
        };
        img.check()?;
        Ok(img)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn side_by_side_puts_a_batch_in_one_row() {
        let (a, b) = (RgbImage::filled(2, 2, [1, 2, 3]), RgbImage::filled(1, 1, [9, 9, 9]));
        let row = RgbImage::side_by_side(&[a, b]);
        assert_eq!((row.width, row.height), (3, 2));
        assert_eq!(row.data, vec![1, 2, 3, 1, 2, 3, 9, 9, 9, 1, 2, 3, 1, 2, 3, 0, 0, 0]);
        assert_eq!(RgbImage::side_by_side(&[]).data, Vec::<u8>::new());
    }

    #[test]
    fn jpeg_with_a_comment() {
        let img = RgbImage::filled(16, 8, [200, 40, 90]);
        // A comment longer than a segment holds is cut at a character boundary.
        let long = "é".repeat(40_000);
        for comment in ["a cat\nSteps: 2", long.as_str()] {
            let bytes = img.to_jpeg(90, Some(comment)).unwrap();
            let back = ::image::load_from_memory_with_format(&bytes, ::image::ImageFormat::Jpeg)
                .unwrap()
                .to_rgb8();
            assert_eq!(back.dimensions(), (16, 8));
            assert!(back
                .pixels()
                .all(|p| p.0.iter().zip([200, 40, 90]).all(|(a, b)| a.abs_diff(b) <= 3)));
            // SOI, the JFIF header, then the comment.
            assert_eq!(&bytes[..4], &[0xFF, 0xD8, 0xFF, 0xE0]);
            let at = 4 + u16::from_be_bytes([bytes[4], bytes[5]]) as usize;
            assert_eq!(&bytes[at..at + 2], &[0xFF, 0xFE]);
            let len = u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]) as usize;
            let text = std::str::from_utf8(&bytes[at + 4..at + 2 + len]).unwrap();
            assert!(
                comment.starts_with(text) && text.len() >= comment.len().min(65_532),
                "{}",
                text.len()
            );
        }
        assert!(img.to_jpeg(0, None).is_err());
        assert!(img.to_jpeg(101, None).is_err());
    }

    #[test]
    fn webp_is_lossless_and_carries_the_parameters() {
        let img = RgbImage {
            width: 7,
            height: 5,
            data: (0..105).map(|v| (v * 37 % 256) as u8).collect(),
        };
        let text = "a <cat> & \"dog\"\nSteps: 4, ein Kätzchen";
        let bytes = img.to_webp(Some(text)).unwrap();
        let back = ::image::load_from_memory_with_format(&bytes, ::image::ImageFormat::WebP)
            .unwrap()
            .to_rgb8();
        assert_eq!(back.into_raw(), img.data);
        assert_eq!(RgbImage::decode(&bytes, "x.webp").unwrap(), img);
        // RIFF chunks after the 12-byte header: the XMP one holds the escaped text.
        let mut at = 12;
        let mut xmp = None;
        while at + 8 <= bytes.len() {
            let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
            if &bytes[at..at + 4] == b"XMP " {
                xmp = Some(String::from_utf8(bytes[at + 8..at + 8 + len].to_vec()).unwrap());
            }
            at += 8 + len + (len & 1);
        }
        let xmp = xmp.expect("an XMP chunk");
        assert!(
            xmp.contains("a &lt;cat&gt; &amp; &quot;dog&quot;\nSteps: 4, ein Kätzchen</rdf:li>"),
            "{xmp}"
        );
        assert!(img.to_webp(None).unwrap().len() < bytes.len());
    }

    #[test]
    fn exif_orientation_turns_photos_upright() {
        // 16 wide, 8 high: red on the left half, blue on the right.
        let mut img = RgbImage::filled(16, 8, [0, 0, 255]);
        for y in 0..8 {
            for x in 0..8 {
                img.data[3 * (y * 16 + x)..3 * (y * 16 + x) + 3].copy_from_slice(&[255, 0, 0]);
            }
        }
        let mut jpeg = img.to_jpeg(95, None).unwrap();
        // An APP1 Exif segment right after SOI: little-endian TIFF, one IFD entry,
        // Orientation (0x0112) SHORT = 6 ("rotate 90° clockwise to display").
        let tiff: [u8; 26] = [
            b'I', b'I', 42, 0, 8, 0, 0, 0, // header, IFD at 8
            1, 0, // one entry
            0x12, 0x01, 3, 0, 1, 0, 0, 0, 6, 0, 0, 0, // Orientation = 6
            0, 0, 0, 0, // no next IFD
        ];
        let mut app1 = vec![0xFF, 0xE1];
        app1.extend_from_slice(&((2 + 6 + tiff.len()) as u16).to_be_bytes());
        app1.extend_from_slice(b"Exif\0\0");
        app1.extend_from_slice(&tiff);
        jpeg.splice(2..2, app1);
        let got = RgbImage::decode(&jpeg, "photo.jpg").unwrap();
        assert_eq!((got.width, got.height), (8, 16));
        // Turned clockwise: the left (red) half is now on top.
        let top = got.pixel(4, 2).unwrap();
        let bottom = got.pixel(4, 13).unwrap();
        assert!(top[0] > 200 && top[2] < 60, "{top:?}");
        assert!(bottom[2] > 200 && bottom[0] < 60, "{bottom:?}");
    }

    #[test]
    fn png_round_trip_and_errors() {
        let mut img = RgbImage::filled(5, 3, [10, 20, 30]);
        img.data[3 * 7] = 200;
        let bytes = img.to_png(Some("a prompt\nSteps: 4")).unwrap();
        assert_eq!(bytes, img.to_png(Some("a prompt\nSteps: 4")).unwrap());
        let back = RgbImage::from_png(&bytes, "x.png").unwrap();
        assert_eq!(back, img);
        assert_eq!(back.pixel(2, 1), Some([200, 20, 30]));
        assert_eq!(back.pixel(5, 0), None);
        let err = RgbImage::from_png(b"not a png", "x.png").unwrap_err().to_string();
        assert!(err.starts_with("x.png: not a readable PNG"), "{err}");
        let short = RgbImage {
            width: 2,
            height: 2,
            data: vec![0; 5],
        };
        assert!(short.to_png(None).unwrap_err().to_string().contains("needs 12 bytes"));
    }
}
